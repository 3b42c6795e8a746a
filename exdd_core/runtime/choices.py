"""Every closed set of choices, written once: the code's own Literal types, and the tuples derived from them
that params validation, the CLI and the library's checks all use. Leaf module (imports nothing of ours), so
any stage can read it without depending on the packages that use the choices."""

from __future__ import annotations

from typing import Literal, get_args

Device = Literal["auto", "cpu", "cuda"]
DataSource = Literal["demo", "ksdd2", "mvtec", "folder"]
SynthBackend = Literal["procedural", "sdxl", "none"]
SynthMasks = Literal["auto", "real", "generated"]
Aggregation = Literal["padded_bilinear", "authors_code"]
StoreDtype = Literal["float16", "float32"]
CoresetMethod = Literal["auto", "plain", "pruned", "lazy"]
DefectPatches = Literal["mask", "bbox_crop"]
ScoreMode = Literal["fused", "paper", "same_patch", "max_ratio"]
FusionForm = Literal["tau", "margin", "head"]
HeadFloor = Literal["calibration_max", "none"]  # scoring.fusion.head_floor
Verdict = Literal["defect", "normal"]  # a verdict from the line (data.feedback)

DEVICES: tuple[str, ...] = get_args(Device)
DATA_SOURCES: tuple[str, ...] = get_args(DataSource)
SYNTH_BACKENDS: tuple[str, ...] = get_args(SynthBackend)
SYNTH_MASKS: tuple[str, ...] = get_args(SynthMasks)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
STORE_DTYPES: tuple[str, ...] = get_args(StoreDtype)
CORESET_METHODS: tuple[str, ...] = get_args(CoresetMethod)
DEFECT_PATCHES: tuple[str, ...] = get_args(DefectPatches)
SCORE_MODES: tuple[str, ...] = get_args(ScoreMode)
FUSION_FORMS: tuple[str, ...] = get_args(FusionForm)
VERDICTS: tuple[str, ...] = get_args(Verdict)
HEAD_FLOORS: tuple[str, ...] = get_args(HeadFloor)
RATIO_MODES: tuple[str, ...] = tuple(
    m for m in SCORE_MODES if m != "fused"
)  # the paper's three (scoring.strategies.Ratio)

# Weights: two named kinds, or a local file with one of these suffixes (safetensors, or torch pickles loaded
# with weights_only=True).
NAMED_WEIGHTS: tuple[str, ...] = ("random", "imagenet")
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")
# Image files every reader accepts (prepare's sources, `exdd score` folders).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
