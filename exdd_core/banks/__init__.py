"""Memory banks: greedy k-center coreset selection, exact k-NN search, bank construction, health."""

from exdd_core.runtime.lazy import lazy_exports

_WHERE = {
    "Bank": "knn",
    "ShardedBank": "distributed",
    "build_bank": "build",
    "coreset_rows": "build",
    "coreset_size": "coreset",
    "defect_bank_health": "health",
    "defect_row_filter": "purify",
    "greedy_coreset": "coreset",
    "greedy_plain": "greedy",
    "greedy_pruned": "pruned",
    "normal_nn_scale": "health",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
