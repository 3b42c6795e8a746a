"""A generated KSDD2-like data set, so the pipeline runs offline on any machine (the demo profile).

Images are 632×224 (H×W) brushed-metal strips: brushing streaks along one axis, slow lighting gradients, fine
grain, per-image brightness/contrast, sometimes a darker band and a slight copper tint. Defective images carry
1–3 scratches, spots or smudges from `exdd_core.data.defects`, some of them faint and small, so that a detector is
neither hopeless nor perfect on it. Image k of a group depends only on (seed, group, k): the same seed gives
the same bytes, and changing one count leaves every other image as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from exdd_core.data.defects import Defect, combine, random_defect
from exdd_core.data.imageio import save_png
from exdd_core.data.records import ImageRecord
from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.parallel import ordered_map

# (split, label) → code mixed into the seed; fixed forever, since changing it changes every image.
GROUP_CODES = {("train", 0): 0, ("train", 1): 1, ("test", 0): 2, ("test", 1): 3}
GROUP_NAMES = {0: "normal", 1: "defective"}
DEFAULT_SIZE = (632, 224)  # KSDD2 at the paper's size; defect sizes below are chosen for it
TEXTURE_RANGE = (20.0, 235.0)  # texture stays here, so a defect's change never vanishes in clipping
DEFECT_KINDS = ("scratch", "spot", "smudge")
DEFECT_KIND_P = (0.45, 0.35, 0.20)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Gaussian-smoothed (periodic) white noise rescaled to unit standard deviation; filtered in the Fourier
    domain, since the long brushing and lighting kernels would take ~0.1 s each as convolutions."""
    spectrum = ndimage.fourier_gaussian(np.fft.rfft2(rng.normal(0.0, 1.0, shape)), sigma=sigma, n=shape[1])
    field = np.fft.irfft2(spectrum, s=shape)
    return field / (field.std() or 1.0)


def _streaks(rng: np.random.Generator, shape: tuple[int, int], vertical: bool) -> np.ndarray:
    """Brushing streaks: noise stretched along the brushing direction and sharp across it."""
    along, across = float(rng.uniform(30, 120)), float(rng.uniform(0.6, 1.6))
    sigma = (along, across) if vertical else (across, along)
    fine = _smooth_noise(rng, shape, sigma)
    coarse = _smooth_noise(rng, shape, (sigma[0] * 2, sigma[1] * 6))
    return 0.7 * fine + 0.3 * coarse


def _lighting(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Slow illumination changes: a tilted plane plus a very smooth random field, roughly in -1..1."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    plane = rng.uniform(-1, 1) * (yy / h - 0.5) + rng.uniform(-0.5, 0.5) * (xx / w - 0.5)
    return plane + 0.4 * _smooth_noise(rng, shape, (h / 5, w / 5))


def _band(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A soft darker band along the strip (0 outside, up to 1 inside), as on commutator segments."""
    w = shape[1]
    centre, half = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.04 * w, 0.2 * w)
    x = np.arange(w, dtype=np.float64)
    edge = max(2.0, float(rng.uniform(2, 10)))
    profile = 1.0 / (1.0 + np.exp((np.abs(x - centre) - half) / edge))
    return np.broadcast_to(profile[None, :], shape)


def texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A defect-free brushed-metal grey image, float64 (H, W) within `TEXTURE_RANGE`."""
    base = rng.uniform(85, 150)
    contrast = rng.uniform(0.7, 1.3)
    vertical = bool(rng.random() < 0.8)
    img = base + contrast * (
        rng.uniform(5, 11) * _streaks(rng, shape, vertical)
        + rng.uniform(8, 22) * _lighting(rng, shape)
        + rng.uniform(1.5, 4.0) * _smooth_noise(rng, shape, (0.5, 0.5))
    )
    if rng.random() < 0.5:
        img = img - rng.uniform(8, 30) * _band(rng, shape)
    return np.clip(img, *TEXTURE_RANGE)


def tint(rng: np.random.Generator) -> np.ndarray:
    """Per-channel gains: equal (grey) or a slight copper cast; the largest gain is 1 so a defect's change
    in grey levels is kept in at least one channel."""
    if rng.random() < 0.5:
        return np.ones(3)
    t = rng.uniform(0.02, 0.08)
    return np.array([1.0, 1.0 - t, 1.0 - 2 * t])


def _one_defect(rng: np.random.Generator, shape: tuple[int, int]) -> Defect:
    """A defect of random kind and size; a third are faint (low contrast), so some images are hard. Sizes are
    for 632×224 and scale with the image, so a smaller `image_size` shows the same data set, smaller."""
    scale = float(np.sqrt(shape[0] * shape[1] / (DEFAULT_SIZE[0] * DEFAULT_SIZE[1])))
    kind = str(rng.choice(DEFECT_KINDS, p=DEFECT_KIND_P))
    faint = bool(rng.random() < 0.35)
    kwargs: dict[str, float] = {}
    if kind == "scratch":
        kwargs["length"] = float(rng.uniform(12, 140)) * scale
        kwargs["contrast"] = float(rng.uniform(10, 22) if faint else rng.uniform(22, 70))
    elif kind == "spot":
        kwargs["radius"] = max(1.5, float(rng.uniform(2.5, 6) if faint else rng.uniform(3, 16)) * scale)
        kwargs["contrast"] = float(rng.uniform(10, 22) if faint else rng.uniform(22, 70))
    else:
        kwargs["contrast"] = float(rng.uniform(7, 12) if faint else rng.uniform(12, 28))
        kwargs["size_scale"] = scale
    return random_defect(rng, shape, kind, **kwargs)


def defects(rng: np.random.Generator, shape: tuple[int, int]) -> Defect:
    """1–3 defects combined; redrawn if all fell off the canvas, so a defective image is never clean."""
    while True:
        found = combine([_one_defect(rng, shape) for _ in range(int(rng.integers(1, 4)))], shape)
        if found.mask.any():
            return found


def render(
    seed: int, split: str, label: int, k: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image k of a group: (uint8 (H, W, 3) image, bool mask, uint8 image without its defects).

    The clean image is returned so tests can check that the mask is exactly the changed pixels."""
    rng = np.random.default_rng([seed, GROUP_CODES[(split, label)], k])
    grey = texture(rng, shape)
    gains = tint(rng)
    if label:
        found = defects(rng, shape)
    else:
        found = Defect(np.zeros(shape, np.float32), np.zeros(shape, bool))

    # Gains apply to the texture only; the defect's change is added unscaled to every channel.
    tinted = grey[:, :, None] * gains[None, None, :]
    clean = np.clip(np.rint(tinted), 0, 255).astype(np.uint8)
    image = np.clip(np.rint(tinted + found.delta[:, :, None]), 0, 255).astype(np.uint8)
    return image, found.mask, clean


def _check_args(seed: int, image_size: tuple[int, int], counts: dict[str, int]) -> None:
    """Reject negative counts/seeds and tiny images with a message naming the parameter."""
    if int(seed) < 0:
        raise ParamError(f"seed must be >= 0, got {seed}")
    if len(image_size) != 2 or min(int(image_size[0]), int(image_size[1])) < 16:
        raise ParamError(f"data.image_size must be (H, W) with both >= 16, got {image_size}")
    for name, n in counts.items():
        if int(n) < 0:
            raise ParamError(f"data.demo.{name} must be >= 0, got {n}")


def generate_demo(
    out_dir: Path,
    *,
    seed: int,
    image_size: tuple[int, int] = DEFAULT_SIZE,
    train_normal: int,
    train_defective: int,
    test_normal: int,
    test_defective: int,
) -> list[ImageRecord]:
    """Write the demo data set as `out_dir/<split>/<id>.png` (+ `<id>_GT.png`, 0/255, for defective images)
    and return its records; ids look like `train_normal_0003`."""
    counts = {
        "train_normal": train_normal,
        "train_defective": train_defective,
        "test_normal": test_normal,
        "test_defective": test_defective,
    }
    _check_args(seed, image_size, counts)
    shape = (int(image_size[0]), int(image_size[1]))
    out_dir = Path(out_dir)
    jobs = [
        (split, label, f"{split}_{GROUP_NAMES[label]}", k)
        for (split, label), _code in GROUP_CODES.items()
        for k in range(int(counts[f"{split}_{GROUP_NAMES[label]}"]))
    ]

    def write(job: tuple[str, int, str, int]) -> ImageRecord:
        split, label, name, k = job
        image, mask, _ = render(seed, split, label, k, shape)  # a function of (seed, split, label, k) alone
        rid = f"{name}_{k:04d}"
        image_path = out_dir / split / f"{rid}.png"
        save_png(image_path, image)
        mask_path = None
        if label:
            mask_path = out_dir / split / f"{rid}_GT.png"
            save_png(mask_path, mask)
        return ImageRecord(rid, split, label, image_path, mask_path)

    records = list(ordered_map(write, jobs))
    return records
