"""Scoring: the one model object (ExddModel) with its strategies (PatchCore, the paper's ratio modes, the
fused score), the defect head, maps, the cross-fit of the fusion weight, and the deployment card."""

from exdd_core.runtime.lazy import lazy_exports

_WHERE = {
    "Card": "card",
    "DefectHead": "defect_head",
    "Evidence": "strategies",
    "ExddModel": "model",
    "Fused": "strategies",
    "ImageResult": "model",
    "PatchCore": "strategies",
    "Ratio": "strategies",
    "ScoringBank": "reweighting",
    "ScoringSettings": "model",
    "StoreScores": "model",
    "Strategy": "strategies",
    "anomaly_map": "maps",
    "build_card": "card",
    "defect_evidence": "fusion",
    "fit_head": "defect_head",
    "fit_lambda": "crossfit",
    "fused_map": "fusion",
    "fused_scores": "fusion",
    "load_card": "card",
    "reweight": "reweighting",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
