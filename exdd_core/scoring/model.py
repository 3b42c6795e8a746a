"""The one model object: the embedder, both banks, the defect head and the scoring settings, taking an image
(or its patch rows) to every score and map. fit_fusion, evaluate, `exdd score` and an exported model all score
through it, so the chain exists once (docs/design.md, "Scoring"):

    image -> embed (backbone, aggregation, projection, store precision) -> patch rows
          -> evidence (nearest rows in M_N and M_P, the head's logits)
          -> every strategy (PatchCore, the paper's ratio modes, fused): image scores and grid maps
          -> maps at image size (bilinear up, Gaussian)
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from exdd_core.banks.health import normal_nn_scale
from exdd_core.features.embedder import Embedder
from exdd_core.features.store import Store
from exdd_core.runtime.choices import RATIO_MODES, SCORE_MODES
from exdd_core.runtime.errors import MismatchError
from exdd_core.runtime.runlog import FALLBACK_NOTE as FALLBACK_NOTE
from exdd_core.scoring.defect_head import DefectHead
from exdd_core.scoring.maps import anomaly_map
from exdd_core.scoring.reweighting import ScoringBank
from exdd_core.scoring.strategies import Evidence, Fused, PatchCore, Ratio, Strategy

SCORE_KEYS = (*SCORE_MODES, "patchcore", "patchcore_reweighted")  # every strategy's name: ImageResult.scores


@dataclass(frozen=True)
class ScoringSettings:
    """The `scoring` params that change scores and maps (the device is where, not what); defaults as
    params.yaml's, with the fused form's weight 0 (PatchCore) until fit_fusion gives one."""

    mode: str = "fused"
    neighbors: int = 3
    eps: float = 1e-6
    sigma: float = 2.0
    map_reweight: bool = True
    map_8bit: bool = False
    fusion: dict[str, Any] = field(default_factory=lambda: {"form": "tau", "lam": 0.0, "topk": 1})

    @classmethod
    def from_params(cls, scoring: dict[str, Any]) -> ScoringSettings:
        """From the `scoring` params with fit_fusion's lam (and head) filled in, or from a card's `scoring`.
        The defect head travels only with the `head` form (it is None when lam is 0)."""
        f = scoring.get("fusion") or {"form": "tau", "lam": 0.0, "topk": 1}
        if f["lam"] == "cv":
            raise ValueError("scoring.fusion.lam is 'cv': pass the cross-fitted value (fusion/fusion.json)")
        fusion = {"form": str(f["form"]), "lam": float(f["lam"]), "topk": int(f["topk"])}
        if fusion["form"] == "head":
            fusion["head"] = f.get("head")
        return cls(
            mode=str(scoring["mode"]),
            neighbors=int(scoring["neighbors"]),
            eps=float(scoring["eps"]),
            sigma=float(scoring["sigma"]),
            map_reweight=bool(scoring["map_reweight"]),
            map_8bit=bool(scoring["map_8bit"]),
            fusion=fusion,
        )


@dataclass
class ImageResult:
    """One image through the model: every strategy's image score, the grid maps, and the maps at image size
    (H, W) on demand. `image` / `resized`: the image as loaded, when the model scored a file."""

    scores: dict[str, float]  # every ExDD mode (SCORE_MODES), patchcore, patchcore_reweighted
    normal_map: np.ndarray  # (h, w) d_N: PatchCore's map
    ratio_map: np.ndarray | None  # (h, w) the paper's ratio (eq. 23); d_N with an empty defect bank; None
    # when `only` asked for no ratio mode
    fused_map: np.ndarray | None  # (h, w) d_N / tau_N + lam * defect evidence; None when `only` left it out
    defect_map: np.ndarray | None  # (h, w) d_P; None with an empty defect bank
    # the defect bank was empty: every ExDD score is PatchCore's (design.md, "Empty defect bank")
    fallback: bool
    model: ExddModel
    image: np.ndarray | None = None
    resized: bool = False

    @property
    def exdd(self) -> dict[str, float]:
        return {m: self.scores[m] for m in SCORE_MODES}

    @property
    def patchcore(self) -> float:
        return self.scores["patchcore"]

    @property
    def patchcore_reweighted(self) -> float:
        return self.scores["patchcore_reweighted"]

    def exdd_map(self) -> np.ndarray:
        """The ExDD map of the reported mode at image size: the fused map for `fused`, else the ratio map."""
        s = self.model.settings
        grid = self.fused_map if s.mode == "fused" else self.ratio_map
        if grid is None:
            raise ValueError(f"the {s.mode} map was not computed: score with `only` including {s.mode!r}")
        if s.mode == "fused":
            return anomaly_map(grid, self.model.image_size, s.sigma)
        return anomaly_map(grid, self.model.image_size, s.sigma, quantize_8bit=s.map_8bit)

    def patchcore_map(self) -> np.ndarray:
        return anomaly_map(self.normal_map, self.model.image_size, self.model.settings.sigma)


@dataclass
class StoreScores:
    """Images of a feature store through the model, in store order: every score (SCORE_KEYS -> float64 (n,))
    and both maps at image size, float32 (n, H, W): the reported mode's and PatchCore's."""

    scores: dict[str, np.ndarray]
    maps_exdd: np.ndarray
    maps_pc: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[StoreScores]) -> StoreScores:
        return cls(
            {k: np.concatenate([p.scores[k] for p in parts]) for k in SCORE_KEYS},
            np.concatenate([p.maps_exdd for p in parts]),
            np.concatenate([p.maps_pc for p in parts]),
        )


class ExddModel:
    """Banks M_N and M_P (rows as the stores hold them, or bank objects: `ScoringBank`), scoring settings,
    image size and patch grid, and the embedder that turns an image into rows (None: rows only, as evaluate
    scores the test store's rows)."""

    def __init__(
        self,
        normal_rows: np.ndarray | Any,
        defect_rows: np.ndarray | Any,
        settings: ScoringSettings,
        image_size: tuple[int, int],
        grid: tuple[int, int],
        device: str = "cpu",
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.grid = (int(grid[0]), int(grid[1]))
        self.normal = ScoringBank(normal_rows, settings.neighbors, device)
        self.defect = ScoringBank(defect_rows, settings.neighbors, device) if len(defect_rows) else None
        # each bank's own scale (median distance of a row to its nearest other row), for the fused score
        self.normal_scale = normal_nn_scale(self.normal.bank)  # also M_N's scale of the bank's health
        self.tau_n = self.normal_scale or 1.0
        self.tau_p = (normal_nn_scale(self.defect.bank) if self.defect is not None else None) or 1.0
        head = settings.fusion.get("head")
        self.head = DefectHead.from_dict(head) if head else None  # the fused `head` form's classifier
        if self.head is not None and len(self.head.weight) != self.normal.bank.dim:
            raise MismatchError(
                f"the defect head has {len(self.head.weight)} weights but the banks' rows have "
                f"{self.normal.bank.dim} dims: card and banks come from different runs"
            )
        f = settings.fusion
        self.strategies: list[Strategy] = [
            PatchCore(),
            PatchCore(reweighted=True),
            *(Ratio(m) for m in RATIO_MODES),
            Fused(self.tau_n, self.tau_p, f["lam"], f["form"], f["topk"]),
        ]

    @classmethod
    def from_stores(
        cls,
        normal: Store,
        defect: Store,
        settings: ScoringSettings,
        device: str = "cpu",
        embedder: Embedder | None = None,
        banks: tuple[Any, Any] | None = None,
    ) -> ExddModel:
        """From the two bank stores (already checked compatible with what will be scored): their rows, or
        `banks` built from them elsewhere (a `ShardedBank` per store: `banks.distributed.shard_stores`)."""
        rows = banks if banks is not None else (normal.read_all(), defect.read_all())
        attrs = normal.attrs
        return cls(rows[0], rows[1], settings, attrs["image_size"], attrs["grid"], device, embedder)

    @property
    def fallback(self) -> bool:
        """True when the defect bank is empty: ExDD scores are the PatchCore score."""
        return self.defect is None

    @property
    def bank_sizes(self) -> dict[str, int]:
        return {"normal": len(self.normal), "defect": 0 if self.defect is None else len(self.defect)}

    def embed(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) at `image_size` -> (h*w, d) patch rows exactly as the banks' stores hold them."""
        if self.embedder is None:
            raise ValueError("this model has no embedder: it scores patch rows (ExddModel.score)")
        rows = self.embedder.rows(image)
        h, w = self.grid
        if rows.shape[0] != h * w:
            raise MismatchError(f"{rows.shape[0]} patch rows != the banks' grid {h}x{w}")
        return rows

    def score_image(self, image: np.ndarray, only: Collection[str] | None = None) -> ImageResult:
        """One image, uint8 (H, W, 3) at `image_size`: embed it, then score its rows."""
        return self.score(self.embed(image), only)

    def score_store(
        self, store: Store, lo: int = 0, hi: int | None = None, progress: Callable = lambda it, d, n: it
    ) -> StoreScores:
        """Images lo..hi of a feature store whose rows are in the banks' space (the test features)."""
        hi = len(store.images) if hi is None else hi
        n, size = hi - lo, self.image_size
        out = StoreScores(
            {k: np.empty(n) for k in SCORE_KEYS},
            np.empty((n, *size), dtype=np.float32),
            np.empty((n, *size), dtype=np.float32),
        )
        images = ((i, rows) for i, _, rows, _ in store.iter_images() if lo <= i < hi)
        for i, rows in progress(images, "evaluate", n):
            scored = self.score(rows)
            for key in SCORE_KEYS:
                out.scores[key][i - lo] = scored.scores[key]
            out.maps_exdd[i - lo] = scored.exdd_map()
            out.maps_pc[i - lo] = scored.patchcore_map()
        return out

    def score(self, rows: np.ndarray, only: Collection[str] | None = None) -> ImageResult:
        """Score one image's patch rows (h*w, d), in the banks' feature space and row order: nearest
        neighbours in both banks once (the evidence), then every strategy, or those named in `only` (SCORE_KEYS;
        the line scores two: the paper's ratio modes would cost each image the reweighting of every patch)."""
        if only is not None and not set(only) <= set(SCORE_KEYS):
            raise ValueError(
                f"only: unknown strategies {sorted(set(only) - set(SCORE_KEYS))}; known {SCORE_KEYS}"
            )
        s = self.settings
        x = torch.as_tensor(np.asarray(rows, dtype=np.float32), device=self.normal.bank.device)
        z = self.head.logits(x).cpu() if self.head is not None and s.fusion["form"] == "head" else None
        ev = Evidence(x, self.grid, self.normal, self.defect, s.eps, s.map_reweight, z)
        scores, maps = {}, {}
        for strategy in self.strategies:
            if only is None or strategy.name in only:
                scores[strategy.name], maps[strategy.name] = strategy(ev)
        fused = maps["fused"] if "fused" in maps else None
        ratio = ev.ratio_map if only is None or set(only) & {*RATIO_MODES} else None
        return ImageResult(scores, ev.normal_map, ratio, fused, ev.defect_map, ev.fallback, self)
