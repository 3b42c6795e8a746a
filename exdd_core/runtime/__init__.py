"""Infrastructure every stage shares: errors, logging, params, atomic writes, hashing, devices, and the
multi-process runtime."""

from exdd_core.runtime.lazy import lazy_exports

_WHERE = {
    "ExddError": "errors",
    "InputError": "errors",
    "MismatchError": "errors",
    "MissingResourceError": "errors",
    "ParamError": "errors",
    "RankStopped": "errors",
    "Ranks": "distributed",
    "atomic_dir": "atomic",
    "atomic_path": "atomic",
    "file_digest": "hashing",
    "gather_shards": "distributed",
    "load_params": "params",
    "log": "runlog",
    "resolve_device": "device",
    "run_stage": "runlog",
    "shard_bounds": "distributed",
    "staging_dir": "atomic",
    "track": "runlog",
    "write_csv_atomic": "atomic",
    "write_text_atomic": "atomic",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
