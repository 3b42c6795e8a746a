"""Features: the backbone, locally aware patch aggregation, projection, extraction into Zarr stores."""
