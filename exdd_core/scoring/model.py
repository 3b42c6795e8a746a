"""The one model object: both banks, the scoring settings and the map settings, turning one image's patch
rows into the ExDD and PatchCore scores and maps. evaluate and `exdd score` both score through it, so the
chain (k-NN -> reweighting -> image score per mode -> upsampled, smoothed map) exists once
(docs/design.md, "Scoring").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from exdd_core.banks.distributed import ShardedBank
from exdd_core.banks.health import normal_nn_scale
from exdd_core.features.embedder import Embedder
from exdd_core.features.store import Store
from exdd_core.runtime.distributed import Ranks, shard_bounds
from exdd_core.runtime.errors import MismatchError
from exdd_core.runtime.runlog import FALLBACK_NOTE as FALLBACK_NOTE
from exdd_core.scoring.defect_head import DefectHead
from exdd_core.scoring.dual import ImageScore, ScoringBank, score_image
from exdd_core.scoring.fusion import fused_scores
from exdd_core.scoring.maps import anomaly_map


@dataclass(frozen=True)
class ScoringSettings:
    """The `scoring` params that change scores and maps (the device is where, not what)."""

    mode: str
    neighbors: int
    eps: float
    sigma: float
    map_reweight: bool
    map_8bit: bool
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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ScoredImage:
    """One image's ImageScore plus its maps at image size (H, W), computed on first use."""

    result: ImageScore
    model: ExddModel
    fused_map: np.ndarray  # (h, w) d_N / tau_N + lam * defect evidence (scoring.fusion)

    def exdd_map(self) -> np.ndarray:
        """The ExDD map of the reported mode: the fused map for `fused`, else the paper's ratio map."""
        s = self.model.settings
        if s.mode == "fused":
            return anomaly_map(self.fused_map, self.model.image_size, s.sigma)
        return anomaly_map(self.result.ratio_map, self.model.image_size, s.sigma, quantize_8bit=s.map_8bit)

    def patchcore_map(self) -> np.ndarray:
        return anomaly_map(self.result.normal_map, self.model.image_size, self.model.settings.sigma)

    def exdd_score(self, mode: str | None = None) -> float:
        return float(self.result.exdd[mode or self.model.settings.mode])


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

    @classmethod
    def from_stores(
        cls,
        normal: Store,
        defect: Store,
        settings: ScoringSettings,
        device: str = "cpu",
        ranks: Ranks | None = None,
        embedder: Embedder | None = None,
    ) -> ExddModel:
        """From the two bank stores (already checked compatible with what will be scored). With `ranks` (a
        torch.distributed group), each rank reads only its shard of each bank (banks.distributed.ShardedBank):
        the same scores, every call then a collective of all ranks."""
        attrs = normal.attrs
        if ranks is None or ranks.world == 1:
            banks: list[Any] = [normal.read_all(), defect.read_all()]
        else:
            banks = []
            for store in (normal, defect):
                a, b = shard_bounds(len(store), ranks.world, ranks.rank)
                banks.append(ShardedBank(store.read_rows(a, b), a, len(store), device))
        return cls(banks[0], banks[1], settings, attrs["image_size"], attrs["grid"], device, embedder)

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

    def score_image(self, image: np.ndarray) -> ScoredImage:
        """One image, uint8 (H, W, 3) at `image_size`: embed it, then score its rows."""
        return self.score(self.embed(image))

    def score(self, rows: np.ndarray) -> ScoredImage:
        """Score one image's patch rows (h*w, d), in the banks' feature space and row order."""
        s = self.settings
        res = score_image(rows, self.grid, self.normal, self.defect, eps=s.eps, map_reweight=s.map_reweight)
        f = s.fusion
        d_p = None if res.defect_map is None else torch.as_tensor(res.defect_map.reshape(-1))
        z = self.head.logits(rows).cpu() if self.head is not None and f["form"] == "head" else None
        score, fused = fused_scores(
            torch.as_tensor(res.normal_map.reshape(-1)), d_p, self.grid,
            tau_n=self.tau_n, tau_p=self.tau_p, lam=f["lam"], form=f["form"], topk=f["topk"], head_z=z,
        )  # fmt: skip
        res.exdd["fused"] = score
        return ScoredImage(res, self, fused)
