"""Data: image records and manifests, image/mask IO, data sources, the prepare step, defect painting."""
