"""Data sets and cached patch features of the quality dev suite (`benchmarks/quality.py`).

Why: comparing scoring variants must not re-run the backbone. Each (data set, data seed) is rendered once to
PNGs in the KSDD2 layout (normal train, a few defective train images with masks, test normal + defective with
masks), synthetic defects are painted by the project's own procedural synthesiser exactly as the pipeline's
`synthesize` stage does, and every image's patch features (the project's extractor, seeded random WRN50,
backbone seed 0 as the held-out runs) are stored as one float16 npz per (backbone, data set, seed, aggregation).
The default backbone is EfficientNet-Lite0 with its registry ImageNet weights, extracted at layers 2, 3 and 4:
a layer set is a slice of the channels (each layer is aggregated on its own and resized to layer 2's grid), so
layer choices are compared without a second extraction. `random` is the seeded random WRN50 of earlier runs.

Data sets differ in surface, colour, defect family, defect thickness and image size. `gravel` (a real photo,
mixed defects, 316x112: closest to the held-out sets) is kept unseen until the variant is chosen.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from exdd_core.data.defects import Defect, combine, random_defect
from exdd_core.data.imageio import load_image, load_mask, save_png
from exdd_core.data.records import ImageRecord
from exdd_core.data.sources import demo

COUNTS = {"train_normal": 120, "train_defective": 15, "test_normal": 60, "test_defective": 40}
QUICK_COUNTS = {"train_normal": 60, "train_defective": 10, "test_normal": 30, "test_defective": 20}
SYNTH_MAX = 100  # sample i depends on (seed, i) only, so count 12/50 are the first 12/50 of these
TEXTURE_FILES = ("brick.png", "gravel.png", "grass.png")
BACKBONES = {
    "lite0": {"name": "tf_efficientnet_lite0", "weights": "imagenet", "layers": [2, 3, 4]},
    "random": {"name": "wide_resnet50_2", "weights": "random", "layers": [2, 3]},
}
LAYER_SETS = {"lite0": {"2+3": (0, 152), "2+3+4": (0, 472), "3+4": (40, 472)}, "random": {"2+3": (0, 1536)}}
BACKBONE_SEED = 0  # the held-out runs used seed 0 for the random backbone


@dataclass(frozen=True)
class DataSpec:
    """One data set: image size (H, W), surface renderer and defect family, and whether it is unseen."""

    name: str
    size: tuple[int, int]
    surface: str
    defects: str
    note: str
    unseen: bool = False


SPECS = {
    s.name: s
    for s in (
        DataSpec(
            "metal", (316, 112), "demo", "mixed", "demo brushed metal, grey/copper, scratch+spot+smudge"
        ),
        DataSpec("brick", (316, 112), "photo:brick.png", "blob", "real brick photo (grey), spots+smudges"),
        DataSpec("fabric", (192, 192), "weave", "colour_blob", "colour woven texture, tinted stains+pulls"),
        DataSpec("mesh", (224, 224), "mesh", "thin", "periodic grey grid, thin 1-2 px cracks"),
        DataSpec("gravel", (316, 112), "photo:gravel.png", "mixed", "real gravel photo, mixed", unseen=True),
    )
}


def extract_textures(wheel: Path, out: Path) -> None:
    """Copy the texture photos out of a scikit-image wheel (`pip download --no-deps scikit-image`)."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in TEXTURE_FILES:
            (out / name).write_bytes(z.read(f"skimage/data/{name}"))


def _photo_crop(rng: np.random.Generator, photo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A random crop of a grey photo, random scale 0.8-1.25, flips and gain: float (H, W)."""
    h, w = size
    s = float(rng.uniform(0.8, 1.25))
    ch, cw = min(photo.shape[0], int(h * s)), min(photo.shape[1], int(w * s))
    y, x = int(rng.integers(photo.shape[0] - ch + 1)), int(rng.integers(photo.shape[1] - cw + 1))
    crop = photo[y : y + ch, x : x + cw].astype(np.float64)
    crop = ndimage.zoom(crop, (h / ch, w / cw), order=1)[:h, :w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    return np.clip(crop * rng.uniform(0.9, 1.1) + rng.uniform(-10, 10), 15, 240)


def _weave(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Colour plain weave: alternating over/under threads of a random palette, float (H, W, 3)."""
    h, w = size
    period = float(rng.uniform(5.5, 7.0))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy, xx = yy + rng.uniform(0, period), xx + rng.uniform(0, period)
    warp, weft = np.sin(np.pi * xx / period) ** 2, np.sin(np.pi * yy / period) ** 2
    over = (np.floor(xx / period) + np.floor(yy / period)) % 2
    shade = np.where(over > 0, 0.55 + 0.45 * warp, 0.55 + 0.45 * weft)
    base = np.array([150.0, 60.0, 50.0]) * rng.uniform(0.85, 1.15, 3)
    img = shade[:, :, None] * base[None, None, :] + rng.normal(0, 4, (h, w, 1))
    return np.clip(img + 25.0, 15, 240)


def _mesh(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Periodic grid of dark bars on a lit plate, small random phase/rotation, float (H, W)."""
    h, w = size
    period, width = float(rng.uniform(11, 13)), float(rng.uniform(2.0, 3.0))
    a = float(rng.normal(0, 0.02))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
    u, v = u + rng.uniform(0, period), v + rng.uniform(0, period)
    du, dv = np.abs((u % period) - period / 2), np.abs((v % period) - period / 2)
    bars = np.clip(width / 2 + 0.5 - np.minimum(period / 2 - du, period / 2 - dv), 0, 1)
    light = (
        160 + 20 * (yy / h - 0.5) * rng.uniform(-1, 1) + ndimage.gaussian_filter(rng.normal(0, 3, size), 1)
    )
    return np.clip(light - 90 * bars, 15, 240)


def _one(rng: np.random.Generator, shape: tuple[int, int], family: str) -> Defect:
    """One defect of the data set's family (sizes as the demo generator, scaled with the image)."""
    scale = float(np.sqrt(shape[0] * shape[1] / (632 * 224)))
    faint = bool(rng.random() < 0.35)
    contrast = float(rng.uniform(10, 22) if faint else rng.uniform(22, 70))
    if family == "thin":
        return random_defect(
            rng,
            shape,
            "scratch",
            length=float(rng.uniform(40, 160)) * scale * 1.5,
            width=float(rng.uniform(1.0, 2.0)),
            contrast=contrast,
        )
    kinds = {"mixed": (demo.DEFECT_KINDS, demo.DEFECT_KIND_P), "blob": (("spot", "smudge"), (0.5, 0.5))}
    names, p = kinds.get(family, (("spot", "smudge", "scratch"), (0.4, 0.4, 0.2)))
    kind = str(rng.choice(names, p=p))
    if kind == "scratch":
        return random_defect(rng, shape, kind, length=float(rng.uniform(12, 140)) * scale, contrast=contrast)
    if kind == "spot":
        r = max(1.5, float(rng.uniform(2.5, 6) if faint else rng.uniform(3, 16)) * scale)
        return random_defect(rng, shape, kind, radius=r, contrast=contrast)
    c = float(rng.uniform(7, 12) if faint else rng.uniform(12, 28))
    return random_defect(rng, shape, "smudge", contrast=c, size_scale=scale)


def render(
    spec: DataSpec, photos: dict[str, np.ndarray], seed: int, group: int, k: int, label: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image k of a group: (uint8 (H, W, 3), bool mask). Group codes as the demo source."""
    if spec.surface == "demo":
        split = "train" if group in (0, 1) else "test"
        img, mask, _ = demo.render(seed, split, label, k, spec.size)
        return img, mask
    rng = np.random.default_rng([seed, 101, group, k])
    if spec.surface.startswith("photo:"):
        base = np.repeat(_photo_crop(rng, photos[spec.surface[6:]], spec.size)[:, :, None], 3, axis=2)
    elif spec.surface == "weave":
        base = _weave(rng, spec.size)
    else:
        base = np.repeat(_mesh(rng, spec.size)[:, :, None], 3, axis=2)
    found = Defect(np.zeros(spec.size, np.float32), np.zeros(spec.size, bool))
    while label and not found.mask.any():
        found = combine(
            [_one(rng, spec.size, spec.defects) for _ in range(int(rng.integers(1, 4)))], spec.size
        )
    gain = np.ones(3)
    if spec.defects == "colour_blob":  # stains take a colour of their own
        gain = rng.uniform(0.2, 1.0, 3)
        gain /= gain.max()
    img = np.clip(np.rint(base + found.delta[:, :, None] * gain), 0, 255).astype(np.uint8)
    return img, found.mask


def write_dataset(spec: DataSpec, seed: int, root: Path, photos: dict, counts: dict) -> dict[str, list]:
    """PNG files + records in the KSDD2 layout; returns records per group."""
    groups = {
        "train_normal": (0, 0),
        "train_defective": (1, 1),
        "test_normal": (2, 0),
        "test_defective": (3, 1),
    }
    out: dict[str, list] = {}
    for name, (code, label) in groups.items():
        recs = []
        for k in range(counts[name]):
            img, mask = render(spec, photos, seed, code, k, label)
            rid = f"{name}_{k:04d}"
            ip, mp = root / name / f"{rid}.png", root / name / f"{rid}_GT.png"
            save_png(ip, img)
            save_png(mp, (mask * 255).astype(np.uint8))
            recs.append(ImageRecord(rid, "train" if code < 2 else "test", label, ip, mp))
        out[name] = recs
    return out


def build_features(
    spec: DataSpec,
    seed: int,
    cache: Path,
    photos: dict,
    counts: dict,
    log: Callable = print,
    backbone: str = "lite0",
) -> Path:
    """Render, synthesise and extract one (data set, seed) for both aggregations; returns the npz folder."""
    import torch

    from exdd_core.features.embedder import make_extractor
    from exdd_core.features.extract import _bbox_crop_rows
    from exdd_core.synth.run import ProceduralBackend, synthesize

    folder = cache / backbone / f"{spec.name}_s{seed}"
    done = folder / "done.json"
    if not photos and spec.surface.startswith("photo:"):
        raise FileNotFoundError(
            f"{cache / 'textures'}: no texture photos; run `pip download --no-deps scikit-image -d /tmp/skw` "
            f"and `python benchmarks/quality_data.py --textures /tmp/skw/scikit_image-*.whl`"
        )
    if done.exists():
        return folder
    t0 = time.perf_counter()
    recs = write_dataset(spec, seed, folder / "data", photos, counts)
    syn_dir = folder / "data" / "synthetic"
    synthesize(
        recs["train_normal"],
        recs["train_defective"],
        syn_dir,
        backend=ProceduralBackend(),
        count=SYNTH_MAX,
        seed=seed,
        prompts=["copper metal scratches", "white marks on the wall"],
        jitter=True,
        diff_threshold=0.08,
        image_size=spec.size,
        log=lambda m: None,
    )
    recipes = json.loads((syn_dir / "recipes.json").read_text())
    nid = {r.id: i for i, r in enumerate(recs["train_normal"])}
    did = {r.id: i for i, r in enumerate(recs["train_defective"])}
    syn = [
        ImageRecord(
            r["id"], "train", 1, syn_dir / "images" / f"{r['id']}.png", syn_dir / "masks" / f"{r['id']}.png"
        )
        for r in recipes
    ]
    meta = {
        "syn_index": np.array([r["index"] for r in recipes]),
        "syn_normal": np.array([nid[r["normal_id"]] for r in recipes]),
        "syn_mask": np.array([did[r["mask_id"]] for r in recipes]),
    }
    sets = {
        "normal": recs["train_normal"],
        "dtrain": recs["train_defective"],
        "synth": syn,
        "test": recs["test_normal"] + recs["test_defective"],
    }
    masks = {k: np.stack([load_mask(r.mask_path, spec.size) for r in v]) for k, v in sets.items()}
    for agg in ("padded_bilinear", "authors_code"):
        ext = make_extractor(BACKBONES[backbone], {"patch_size": 3, "aggregation": agg}, BACKBONE_SEED, "cpu")
        feats: dict[str, np.ndarray] = {}
        for key, rs in sets.items():
            if agg == "authors_code" and key in ("dtrain", "synth"):  # rows D/J: bbox crops at 128x128
                crops = [
                    _bbox_crop_rows(
                        load_image(r.image_path, spec.size), load_mask(r.mask_path, spec.size), ext
                    )[0].numpy()
                    for r in rs
                ]
                feats[f"{key}_bbox"] = np.stack(crops).astype(np.float16)
                continue
            rows = []
            for r in rs:
                with torch.inference_mode():
                    f = ext(load_image(r.image_path, spec.size))
                rows.append(f[0].permute(1, 2, 0).reshape(-1, f.shape[1]).numpy().astype(np.float16))
                grid = tuple(f.shape[-2:])
            feats[key] = np.stack(rows)
        np.savez(folder / f"feat_{agg}.npz", grid=np.array(grid), **feats)
        log(f"  {spec.name} s{seed} {agg}: {time.perf_counter() - t0:.0f} s")
    labels = np.array([0] * counts["test_normal"] + [1] * counts["test_defective"])
    np.savez_compressed(
        folder / "masks.npz", labels=labels, **{f"mask_{k}": v for k, v in masks.items()}, **meta
    )
    done.write_text(json.dumps({"seconds": time.perf_counter() - t0, "counts": counts}))
    return folder


def load_photos(textures: Path) -> dict[str, np.ndarray]:
    """The grey texture photos, float (H, W); empty dict when the folder is missing."""
    from PIL import Image

    return {p.name: np.asarray(Image.open(p).convert("L"), dtype=np.float64) for p in textures.glob("*.png")}


def build_all(
    cache: Path,
    seeds: list[int],
    names: list[str],
    counts: dict,
    log: Callable = print,
    backbone: str = "lite0",
) -> float:
    """Build every missing (data set, seed) cache, seed-major so seed 0 of every set is ready first."""
    import torch

    torch.set_num_threads(1)
    photos = load_photos(cache / "textures")
    t0 = time.perf_counter()
    for seed in seeds:
        for name in names:
            build_features(SPECS[name], seed, cache, photos, counts, log, backbone)
    return time.perf_counter() - t0


if __name__ == "__main__":
    import argparse
    import os

    ap = argparse.ArgumentParser(description="build the dev suite's feature cache")
    ap.add_argument("--textures", type=Path, help="a scikit-image wheel to take the texture photos from")
    ap.add_argument("--backbone", choices=tuple(BACKBONES), default="lite0")
    args = ap.parse_args()
    root = Path(os.environ.get("EXDD_QUALITY_CACHE", Path(__file__).resolve().parents[1] / ".quality-cache"))
    if args.textures:
        extract_textures(args.textures, root / "textures")
    secs = build_all(root, [0, 1, 2], list(SPECS), COUNTS, backbone=args.backbone)
    print(f"feature_extraction_seconds: {secs:.0f}")
