"""Memory banks: greedy k-center coreset selection, exact k-NN search, bank construction, health."""

from exdd_core.runtime.lazy import lazy_surface

__all__, __getattr__ = lazy_surface(
    __name__,
    "Bank ShardedBank build_bank calibration_ids coreset_rows coreset_size defect_bank_health defect_row_filter greedy_coreset greedy_lazy greedy_plain greedy_pruned normal_nn_scale",
)
