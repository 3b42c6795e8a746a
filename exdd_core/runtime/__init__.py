"""Infrastructure every stage shares: errors, logging, params, atomic writes, hashing, devices, and the
multi-process runtime."""

from exdd_core.runtime.lazy import lazy_surface

__all__, __getattr__ = lazy_surface(
    __name__,
    "ExddError InputError MismatchError MissingResourceError ParamError RankStopped Ranks atomic_dir atomic_path file_digest gather_shards load_params log resolve_device run_stage shard_bounds staging_dir track write_csv_atomic write_text_atomic",
)
