"""Scoring machinery of the quality dev suite (`quality.py`): one (data set, seed) context with its cached
features and banks, and a Scorer that evaluates one variant dict on the test split.

Why a module of its own: the driver (variants, selection rule, tables) stays short, and every number a variant
reports goes through the same bank construction (the project's coreset, 1 % normal min 1000, 10 % defect),
the same pixel maps (bilinear up, Gaussian sigma 2) and the project's metrics. Cross-fitted parameters (lam,
gamma) only ever see training images: banks are rebuilt without the held-out fold, synthetic images painted into
or with a fold image are dropped with it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_data import LAYER_SETS, SPECS

from exdd_core.banks.coreset import coreset_size, greedy_coreset
from exdd_core.banks.health import normal_self_nn
from exdd_core.banks.knn import Bank
from exdd_core.evaluation.image_metrics import image_metrics
from exdd_core.evaluation.pixel_metrics import pixel_report
from exdd_core.features.patches import mask_coverage
from exdd_core.features.projection import projection_matrix
from exdd_core.scoring import fusion
from exdd_core.scoring.defect_head import HEAD_C, fit_head
from exdd_core.scoring.maps import anomaly_map
from exdd_core.scoring.model import ExddModel, ScoringSettings

CACHE = Path(os.environ.get("EXDD_QUALITY_CACHE", Path(__file__).resolve().parents[1] / ".quality-cache"))
LAMS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
GAMMAS = (0.0, 0.25, 0.5, 1.0)
FOLDS = 4


def channel_weights(
    defect_resid: torch.Tensor, normal_resid: torch.Tensor, gamma: float, eps: float = 1e-8
) -> torch.Tensor:
    """Per-channel metric weights (C,), mean 1: (mean defect r_c^2 / mean normal r_c^2) ** gamma.

    Why: a channel in which known defects deviate from their nearest normal row more than normal rows
    deviate from theirs carries defect signal; one that only carries texture noise is down-weighted.
    gamma = 0 (or no defect rows) gives all-ones weights, i.e. the plain Euclidean PatchCore metric."""
    c = normal_resid.shape[1]
    if gamma == 0 or defect_resid.shape[0] == 0:
        return torch.ones(c, dtype=torch.float32, device=normal_resid.device)
    snr = (defect_resid.double().pow(2).mean(0) + eps) / (normal_resid.double().pow(2).mean(0) + eps)
    w = snr.pow(gamma)
    return (w / w.mean()).to(torch.float32)


def coreset_rows(rows: np.ndarray, ratio: float, seed: int, min_size: int = 1000) -> np.ndarray:
    """Indices of the project's coreset (128-d Gaussian projection for selection, greedy k-center)."""
    k = coreset_size(len(rows), ratio, min_size)
    if k >= len(rows):
        return np.arange(len(rows))
    proj = rows.astype(np.float32) @ projection_matrix(rows.shape[1], 128, seed)
    return np.sort(greedy_coreset(proj, k, seed=seed).indices)


class Ctx:
    """One (data set, seed): cached features, the normal banks (full and per fold), defect-row candidates."""

    def __init__(
        self,
        name: str,
        seed: int,
        agg: str = "padded_bilinear",
        backbone: str = "lite0",
        layers: str = "2+3",
    ) -> None:
        self.name, self.seed, self.spec = name, seed, SPECS[name]
        self.folder = CACHE / backbone / f"{name}_s{seed}"
        f = np.load(self.folder / f"feat_{agg}.npz")
        m = np.load(self.folder / "masks.npz")
        self.grid = tuple(int(v) for v in f["grid"])
        a, b = LAYER_SETS[backbone][layers]  # a layer set is a slice of the cached channels
        self.feats = {k: np.ascontiguousarray(f[k][..., a:b]) for k in f.files if k != "grid"}
        self.layers = layers
        self.masks = {k[5:]: m[k] for k in m.files if k.startswith("mask_")}
        self.labels = m["labels"]
        self.syn_normal, self.syn_mask, self.syn_index = m["syn_normal"], m["syn_mask"], m["syn_index"]
        self.n_normal = len(self.feats["normal"])
        self.fold_of_normal = np.arange(self.n_normal) % FOLDS
        self.fold_of_def = np.arange(len(self.masks["dtrain"])) % FOLDS
        self._bank_cache: dict[str, np.ndarray] = {}
        self.agg = agg

    def normal_bank(self, fold: int | None = None) -> torch.Tensor:
        """M_N rows (full, or without fold `fold`); coreset indices cached on disk."""
        key = f"{self.agg}_{self.layers}_f{fold}"
        path = self.folder / f"bank_{key}.npy"
        keep = np.arange(self.n_normal) if fold is None else np.flatnonzero(self.fold_of_normal != fold)
        rows = self.feats["normal"][keep].reshape(-1, self.feats["normal"].shape[-1])
        if not path.exists():
            np.save(path, coreset_rows(rows, 0.01, self.seed))
        return torch.as_tensor(rows[np.load(path)].astype(np.float32))

    def coverage(self, key: str, dilate: int = 0) -> np.ndarray:
        """(n, h*w) mask coverage of each grid cell, masks optionally grown by `dilate` px."""
        from scipy import ndimage

        out = []
        for mk in self.masks[key]:
            if dilate:
                mk = ndimage.binary_dilation(mk, iterations=dilate)
            out.append(mask_coverage(torch.as_tensor(mk), self.grid).reshape(-1).numpy())
        return np.stack(out)

    def defect_rows(self, real: bool, synth: int, thr: float = 0.5, dilate: int = 0, fold: int | None = None):
        """Defect-bank candidate rows (mask selection, SPEC row D), optionally without training fold `fold`
        (its real defect images and every synthetic image painted into/with a fold image)."""
        parts = []
        if real:
            cov = self.coverage("dtrain", dilate)
            for i in range(len(cov)):
                if fold is None or self.fold_of_def[i] != fold:
                    parts.append(self.feats["dtrain"][i][cov[i] >= thr])
        if synth:
            cov = self.coverage("synth", dilate)
            for j in np.flatnonzero(self.syn_index < synth):
                if fold is not None and (
                    self.fold_of_normal[self.syn_normal[j]] == fold
                    or self.fold_of_def[self.syn_mask[j]] == fold
                ):
                    continue
                parts.append(self.feats["synth"][j][cov[j] >= thr])
        dim = self.feats["normal"].shape[-1]
        rows = np.concatenate(parts) if parts else np.zeros((0, dim), np.float16)
        return torch.as_tensor(rows.astype(np.float32))


def bank_scale(rows: torch.Tensor) -> float:
    """A bank's own scale as the pipeline computes it (banks.health): the median distance of its rows to
    their nearest other row; 1.0 (neutral) for fewer than 2 rows."""
    spacing = normal_self_nn(Bank(rows))
    return float(np.median(spacing)) if len(spacing) else 1.0


def nn1(bank: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour distance and index of each query row in a bank (the project's exact kNN)."""
    d, i = Bank(bank).knn(q, 1)
    return d[:, 0], i[:, 0]


def purify(rows: torch.Tensor, normal: torch.Tensor, purify_q: float | None) -> torch.Tensor:
    """Drop defect rows closer to M_N than the q-quantile of M_N's own spacing (None: keep all)."""
    if len(rows) and purify_q is not None:
        dn, _ = nn1(normal, rows)
        rows = rows[dn >= float(np.quantile(normal_self_nn(Bank(normal)), purify_q))]
    return rows


def build_defect_bank(
    rows: torch.Tensor, normal: torch.Tensor, purify_q: float | None, seed: int
) -> torch.Tensor:
    """Purify against M_N (optional), then the project's 10 % coreset (min 1000)."""
    rows = purify(rows, normal, purify_q)
    if len(rows) == 0:
        return rows
    return rows[torch.as_tensor(coreset_rows(rows.numpy(), 0.1, seed))]


def pixel_eval(maps: list[np.ndarray], masks: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """Pixel AUROC and AUPRO@0.3 of grid maps, upsampled and smoothed as the pipeline (sigma 2)."""
    up = np.stack([anomaly_map(m, size, 2.0) for m in maps])
    px = pixel_report(masks, up, 0.3).metrics()
    return px["auroc"], px["aupro"]


def evaluate(ctx: Ctx, scores: np.ndarray, maps: list[np.ndarray]) -> tuple[float, float, float]:
    """(I-AUROC, P-AUROC, AUPRO) on the test split."""
    pa, pro = pixel_eval(maps, ctx.masks["test"], ctx.spec.size)
    return image_metrics(ctx.labels, scores)["auroc"], pa, pro


class Scorer:
    """Scores variants on one Ctx; keeps d_N of the test split and per-bank results in memory."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.mn = ctx.normal_bank()
        self.tau_n = bank_scale(self.mn)
        t = ctx.feats["test"]
        self.test = torch.as_tensor(t.reshape(-1, t.shape[-1]).astype(np.float32))
        self.n_img, self.p = t.shape[0], t.shape[1]
        self.dn, _ = nn1(self.mn, self.test)
        self.pc_maps = [m.numpy() for m in self.dn.reshape(self.n_img, *ctx.grid)]
        self._cv: dict[str, tuple] = {}
        self._res: dict[tuple, tuple] = {}
        self._ratio: dict[str, tuple] = {}

    def bank(self, b: dict, fold: int | None = None, normal: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.ctx.defect_rows(b["real"], b["synth"], b["thr"], b["dilate"], fold)
        return build_defect_bank(rows, self.mn if normal is None else normal, b["purify"], self.ctx.seed)

    def head(self, b: dict, fold: int | None = None, c: float = HEAD_C):
        """The defect head fit on training rows outside `fold`: normal rows against purified defect rows."""
        ctx = self.ctx
        mn = self.mn if fold is None else ctx.normal_bank(fold)
        rows = purify(ctx.defect_rows(b["real"], b["synth"], b["thr"], b["dilate"], fold), mn, b["purify"])
        keep = np.arange(ctx.n_normal) if fold is None else np.flatnonzero(ctx.fold_of_normal != fold)
        normal = ctx.feats["normal"][keep].reshape(-1, ctx.feats["normal"].shape[-1])
        return fit_head(normal, rows.numpy(), ctx.seed, c)

    def run(self, v: dict) -> tuple[tuple[float, float, float], dict]:
        ctx, g = self.ctx, self.ctx.grid
        if v["kind"] == "patchcore":
            scores = self.dn.reshape(self.n_img, -1).max(1).values.numpy()
            return evaluate(ctx, scores, self.pc_maps), {}
        if v["kind"] == "snr":
            return self.run_snr(v)
        mp = self.bank(v["bank"])
        info: dict = {"bank_rows": len(mp)}
        if v["kind"] == "ratio":  # the pipeline's model: the paper's three modes share one pass and one map
            key = repr(sorted(v["bank"].items()))
            if key not in self._ratio:
                model = ExddModel(self.mn.numpy(), mp.numpy(), ScoringSettings(neighbors=3), ctx.spec.size, g)
                res = [model.score(self.test[i * self.p : (i + 1) * self.p]) for i in range(self.n_img)]
                px = pixel_eval([r.ratio_map for r in res], ctx.masks["test"], ctx.spec.size)
                self._ratio[key] = (res, px)
            res, px = self._ratio[key]
            scores = np.array([r.exdd[v["mode"]] for r in res])
            return (image_metrics(ctx.labels, scores)["auroc"], *px), info
        lam = v["lam"]
        tau_p = bank_scale(mp) if len(mp) > 1 else 1.0
        dp = nn1(mp, self.test)[0] if len(mp) else None
        if lam == "cv":
            lam = self.fit_lambda(v)
            info["lam"] = lam
        z = None
        if v["form"] == "head":
            h = self.head(v["bank"], None, v.get("c", HEAD_C))
            z = None if h is None else h.logits(self.test)
        scores, maps = [], []
        for i in range(self.n_img):
            sl = slice(i * self.p, (i + 1) * self.p)
            s, m = fusion.fused_scores(
                self.dn[sl],
                None if dp is None else dp[sl],
                g,
                tau_n=self.tau_n,
                tau_p=tau_p,
                lam=lam,
                form=v["form"],
                topk=v["topk"],
                head_z=None if z is None else z[sl],
            )
            scores.append(s)
            maps.append(m)
        return evaluate(ctx, np.array(scores), maps), info

    def snr_weights(self, b: dict, gamma: float, fold: int | None = None) -> torch.Tensor:
        """fusion.channel_weights from training data only (defect rows and normal rows outside `fold`)."""
        key = (repr(sorted(b.items())), fold)
        if key not in self._res:
            ctx, mn = self.ctx, self.ctx.normal_bank(fold)
            rows = ctx.defect_rows(b["real"], b["synth"], b["thr"], b["dilate"], fold)
            dres = rows - mn[nn1(mn, rows)[1]] if len(rows) else rows
            keep = np.arange(ctx.n_normal) if fold is None else np.flatnonzero(ctx.fold_of_normal != fold)
            src = ctx.feats["normal"][keep].reshape(-1, rows.shape[1])
            pick = np.random.default_rng(ctx.seed).choice(len(src), min(8000, len(src)), replace=False)
            x = torch.as_tensor(src[pick].astype(np.float32))
            d, i = nn1(mn, x)
            self._res[key] = (dres, (x - mn[i])[d > 0])  # rows that are bank members have no residual
        dres, nres = self._res[key]
        return channel_weights(dres, nres, gamma)

    def run_snr(self, v: dict) -> tuple[tuple[float, float, float], dict]:
        """PatchCore in the metric weighted by fusion.channel_weights (gamma fixed or cross-fitted)."""
        gamma = v["gamma"] if v["gamma"] != "cv" else self.fit_gamma(v)
        sw = self.snr_weights(v["bank"], gamma).sqrt()
        dn = nn1(self.mn * sw, self.test * sw)[0].reshape(self.n_img, -1)
        scores = np.array([fusion.topk_mean(d, v["topk"]) for d in dn])
        maps = [m.numpy() for m in dn.reshape(self.n_img, *self.ctx.grid)]
        return evaluate(self.ctx, scores, maps), {"gamma": gamma}

    def fit_gamma(self, v: dict) -> float:
        """gamma from GAMMAS by the cross-fitted criterion of fit_lambda; ties -> smaller (0 = PatchCore)."""
        ctx, queries = self.ctx, []
        for f in range(FOLDS):
            q = [ctx.feats["normal"][i] for i in np.flatnonzero(ctx.fold_of_normal == f)]
            di = np.flatnonzero(ctx.fold_of_def == f)
            cov = ctx.coverage("dtrain")[di] >= 0.25
            x = torch.as_tensor(np.concatenate(q + [ctx.feats["dtrain"][i] for i in di]).astype(np.float32))
            cells = np.concatenate([np.zeros(len(q) * self.p, bool), cov.reshape(-1)])
            queries.append((x, len(q), len(di), cells))

        def crit(gamma: float) -> float:
            img, lab, pix, cel = [], [], [], []
            for f, (x, nq, nd, cells) in enumerate(queries):
                sw = self.snr_weights(v["bank"], gamma, f).sqrt()
                mn = ctx.normal_bank(f) * sw
                d = nn1(mn, x * sw)[0] / bank_scale(mn)
                img += [fusion.topk_mean(r, v["topk"]) for r in d.reshape(nq + nd, -1)]
                lab += [0] * nq + [1] * nd
                pix.append(d.numpy())
                cel.append(cells)
            y = np.concatenate(cel)
            p = roc_auc_score(y, np.concatenate(pix)) if y.any() else 0.5
            return 0.5 * (roc_auc_score(lab, img) + p)

        return fusion.select_by_cv(GAMMAS, crit)

    def cv_data(self, b: dict, c: float | None = None) -> tuple:
        """Cross-fitted per-patch (d_N, d_P, head logits or None) of held-out training images, banks and head
        (when `c` is given: its L2 strength) built without their fold."""
        key = repr((sorted(b.items()), c))
        if key in self._cv:
            return self._cv[key]
        ctx = self.ctx
        dns, dps, zs, labels, cells, taus = [], [], [], [], [], []
        cov = ctx.coverage("dtrain")
        for f in range(FOLDS):
            mn = ctx.normal_bank(f)
            mp = self.bank(b, fold=f, normal=mn)
            tn, tp = bank_scale(mn), (bank_scale(mp) if len(mp) > 1 else 1.0)
            q = [ctx.feats["normal"][i] for i in np.flatnonzero(ctx.fold_of_normal == f)]
            di = np.flatnonzero(ctx.fold_of_def == f)
            q += [ctx.feats["dtrain"][i] for i in di]
            lab = [0] * (len(q) - len(di)) + [1] * len(di)
            x = torch.as_tensor(np.concatenate(q).astype(np.float32))
            dn = nn1(mn, x)[0].reshape(len(q), -1)
            dp = nn1(mp, x)[0].reshape(len(q), -1) if len(mp) else None
            h = self.head(b, f, c) if c is not None else None
            z = h.logits(x).reshape(len(q), -1) if h is not None else None
            for j in range(len(q)):
                dns.append(dn[j])
                dps.append(None if dp is None else dp[j])
                zs.append(None if z is None else z[j])
                taus.append((tn, tp))
                labels.append(lab[j])
                k = j - (len(q) - len(di))
                cells.append(cov[di[k]] >= 0.25 if lab[j] else np.zeros(dn.shape[1], bool))
        self._cv[key] = (dns, dps, zs, np.array(labels), cells, taus)
        return self._cv[key]

    def fit_lambda(self, v: dict) -> float:
        """lam from LAMS by cross-fitted (image AUROC + grid-cell AUROC) / 2 on training folds; ties -> smaller."""
        c = v.get("c", HEAD_C) if v["form"] == "head" else None
        dns, dps, zs, labels, cells, taus = self.cv_data(v["bank"], c)

        def crit(lam: float) -> float:
            maps = [
                fusion.fused_map(dn, dp, tn, tp, lam, v["form"], z)
                for dn, dp, z, (tn, tp) in zip(dns, dps, zs, taus, strict=True)
            ]
            img = [fusion.topk_mean(m, v["topk"]) for m in maps]
            y = np.concatenate(cells)
            pix = roc_auc_score(y, torch.cat(maps).numpy()) if y.any() else 0.5
            return 0.5 * (roc_auc_score(labels, img) + pix)

        return fusion.select_by_cv(LAMS, crit)


def run_authors(
    name: str, seed: int, backbone: str = "lite0", layers: str = "2+3"
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The authors_code preset (rows A-J): its own features, bbox-crop defect bank, b=2, 8-bit unreweighted
    ratio map, mode paper; returns (preset, PatchCore on the same features)."""
    ctx = Ctx(name, seed, "authors_code", backbone, layers)
    mn = ctx.normal_bank()
    f = ctx.feats
    rows = np.concatenate(
        [
            f["dtrain_bbox"].reshape(-1, f["dtrain_bbox"].shape[-1]),
            f["synth_bbox"][ctx.syn_index < 12].reshape(-1, f["synth_bbox"].shape[-1]),
        ]
    )
    mp = build_defect_bank(torch.as_tensor(rows.astype(np.float32)), mn, None, seed)
    settings = ScoringSettings(neighbors=2, map_reweight=False)
    model = ExddModel(mn.numpy(), mp.numpy(), settings, ctx.spec.size, ctx.grid)
    t = f["test"]
    res = [model.score(t[i].astype(np.float32)) for i in range(len(t))]
    size = ctx.spec.size
    up = np.stack([anomaly_map(r.ratio_map, size, 2.0, quantize_8bit=True) for r in res])
    px = pixel_report(ctx.masks["test"], up, 0.3).metrics()
    a = (
        image_metrics(ctx.labels, np.array([r.exdd["paper"] for r in res]))["auroc"],
        px["auroc"],
        px["aupro"],
    )
    b = evaluate(ctx, np.array([r.patchcore for r in res]), [r.normal_map for r in res])
    return a, b
