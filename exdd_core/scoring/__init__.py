"""Scoring: the one model object (ExddModel) with its strategies (PatchCore, the paper's ratio modes, the
fused score), the defect head, maps, the cross-fit of the fusion weight, and the deployment card."""

from exdd_core.runtime.lazy import lazy_surface

__all__, __getattr__ = lazy_surface(
    __name__,
    "Card DefectHead Evidence ExddModel Fused ImageResult PatchCore Ratio ScoringBank ScoringSettings StoreScores Strategy anomaly_map build_card defect_evidence fit_head fit_lambda fused_map fused_scores load_card reweight",
)
