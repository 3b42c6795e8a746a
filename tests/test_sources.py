"""Data sources: KSDD2 and MVTec layouts read back with the right labels and masks, the KSDD2 archive checked
before extraction, and the demo generator deterministic and honest about its masks. Never the network."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from exdd_core.data import load_image, load_mask, save_png
from exdd_core.data.sources import demo, ksdd2
from exdd_core.data.sources.ksdd2 import ensure_ksdd2, extract_zip_safely, file_md5, read_ksdd2
from exdd_core.data.sources.mvtec import read_mvtec
from exdd_core.runtime import InputError, MissingResourceError

H, W = 20, 8


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _defect_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[5:9, 2:5] = True
    return m


def _make_ksdd2(root: Path) -> None:
    """train: two normal, one defective, one "(copy)" duplicate; test: one of each."""
    for split, items in {"train": ["10000", "10001", "10002"], "test": ["20000", "20001"]}.items():
        for j, stem in enumerate(items):
            save_png(root / split / f"{stem}.png", _img(j))
            defective = stem in ("10002", "20001")
            save_png(root / split / f"{stem}_GT.png", _defect_mask() if defective else np.zeros((H, W), bool))
    save_png(root / "train" / "10002 (copy).png", _img(9))
    save_png(root / "train" / "10002 (copy)_GT.png", _defect_mask())


def test_ksdd2_labels_masks_and_copies(tmp_path: Path) -> None:
    _make_ksdd2(tmp_path)
    train = read_ksdd2(tmp_path, "train")
    assert [(r.id, r.label) for r in train] == [("10000", 0), ("10001", 0), ("10002", 1)]
    assert train[0].mask_path is None
    assert train[2].mask_path == tmp_path / "train" / "10002_GT.png"
    assert (load_mask(train[2].mask_path) == _defect_mask()).all()
    test = read_ksdd2(tmp_path, "test")
    assert [(r.id, r.split, r.label) for r in test] == [("20000", "test", 0), ("20001", "test", 1)]


def test_ksdd2_missing_gt_empty_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="train"):
        read_ksdd2(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(InputError, match="no KSDD2 images"):
        read_ksdd2(tmp_path, "train")
    save_png(tmp_path / "train" / "10000.png", _img(0))
    with pytest.raises(InputError, match=re.escape("10000_GT.png")):
        read_ksdd2(tmp_path, "train")


def _zip_of(folder: Path, zip_path: Path, prefix: str = "") -> None:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())


@pytest.mark.parametrize("prefix", ["", "KolektorSDD2/"])
def test_ensure_ksdd2_extracts_checked_zip(tmp_path: Path, prefix: str) -> None:
    _make_ksdd2(tmp_path / "src")
    zip_path = tmp_path / "KolektorSDD2.zip"
    _zip_of(tmp_path / "src", zip_path, prefix)
    root = ensure_ksdd2(tmp_path / "ksdd2", zip_path, md5=file_md5(zip_path))
    assert [r.label for r in read_ksdd2(root, "train")] == [0, 0, 1]
    assert ensure_ksdd2(root, None) == root  # already extracted: no zip needed


def test_ensure_ksdd2_refuses_wrong_md5(tmp_path: Path) -> None:
    _make_ksdd2(tmp_path / "src")
    zip_path = tmp_path / "KolektorSDD2.zip"
    _zip_of(tmp_path / "src", zip_path)
    with pytest.raises(InputError, match="MD5"):
        ensure_ksdd2(tmp_path / "ksdd2", zip_path)  # the official MD5, which this zip does not have
    assert not (tmp_path / "ksdd2" / "train").exists()


def test_zip_member_escaping_target_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train/10000.png", b"x")
        zf.writestr("../evil.png", b"x")
    zip_path = tmp_path / "evil.zip"
    zip_path.write_bytes(buf.getvalue())
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(InputError, match=re.escape("evil.png")):
        extract_zip_safely(zip_path, target)
    assert not (tmp_path / "evil.png").exists()
    md5 = hashlib.md5(buf.getvalue()).hexdigest()
    with pytest.raises(InputError, match=re.escape("evil.png")):
        ensure_ksdd2(tmp_path / "ksdd2", zip_path, md5=md5)


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("train/link.png")
        info.external_attr = 0o120777 << 16  # a symlink
        zf.writestr(info, "/etc/passwd")
    zip_path = tmp_path / "link.zip"
    zip_path.write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="symbolic link"):
        extract_zip_safely(zip_path, tmp_path / "out")


def test_missing_ksdd2_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(ksdd2.urllib.request, "urlopen", offline)
    zip_path = tmp_path / "dl" / "KolektorSDD2.zip"
    with pytest.raises(MissingResourceError) as err:
        ensure_ksdd2(tmp_path / "ksdd2", zip_path)
    msg = str(err.value)
    assert ksdd2.KSDD2_URL in msg and str(zip_path) in msg and ksdd2.KSDD2_MD5 in msg and "dvc pull" in msg


def _make_mvtec(root: Path) -> None:
    for j in range(2):
        save_png(root / "train" / "good" / f"{j:03d}.png", _img(j))
    save_png(root / "test" / "good" / "000.png", _img(5))
    save_png(root / "test" / "scratch" / "000.png", _img(6))
    save_png(root / "test" / "scratch" / "001.png", _img(7))
    for stem in ("000", "001"):
        save_png(root / "ground_truth" / "scratch" / f"{stem}_mask.png", _defect_mask())


def test_mvtec_layout(tmp_path: Path) -> None:
    _make_mvtec(tmp_path)
    train = read_mvtec(tmp_path, "train")
    assert [(r.id, r.label, r.mask_path) for r in train] == [("good_000", 0, None), ("good_001", 0, None)]
    test = read_mvtec(tmp_path, "test")
    assert [(r.id, r.label) for r in test] == [("good_000", 0), ("scratch_000", 1), ("scratch_001", 1)]
    assert test[1].mask_path == tmp_path / "ground_truth" / "scratch" / "000_mask.png"


def test_mvtec_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="train"):
        read_mvtec(tmp_path, "train")
    _make_mvtec(tmp_path)
    (tmp_path / "ground_truth" / "scratch" / "001_mask.png").unlink()
    # a defective test image without a mask is an image-level label, not an error
    unmasked = [r for r in read_mvtec(tmp_path, "test") if r.label and r.mask_path is None]
    assert [r.id for r in unmasked] == ["scratch_001"]
    empty = tmp_path / "empty"
    (empty / "train" / "good").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        read_mvtec(empty, "train")


SMALL = (96, 48)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*.png")
    }


def test_demo_is_byte_identical_and_count_independent(tmp_path: Path) -> None:
    kw = {"seed": 3, "image_size": SMALL, "test_normal": 1, "test_defective": 1}
    recs = demo.generate_demo(tmp_path / "a", train_normal=2, train_defective=2, **kw)
    demo.generate_demo(tmp_path / "b", train_normal=2, train_defective=2, **kw)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    demo.generate_demo(tmp_path / "c", train_normal=4, train_defective=1, **kw)
    a, c = _hashes(tmp_path / "a"), _hashes(tmp_path / "c")
    for name in (
        "train/train_normal_0001.png",
        "train/train_defective_0000.png",
        "test/test_defective_0000.png",
    ):
        assert a[name] == c[name]
    assert [r.id for r in recs][:3] == ["train_normal_0000", "train_normal_0001", "train_defective_0000"]
    assert all((r.mask_path is None) == (r.label == 0) for r in recs)
    assert load_image(recs[0].image_path).shape == (*SMALL, 3)


def test_demo_defect_mask_is_the_footprint() -> None:
    for k in range(6):
        image, mask, clean = demo.render(11, "train", 1, k, (632, 224))
        assert mask.any()
        assert ((image != clean).any(axis=2) == mask).all()
        normal, normal_mask, normal_clean = demo.render(11, "test", 0, k, SMALL)
        assert not normal_mask.any() and (normal == normal_clean).all()


def test_demo_written_mask_matches_render(tmp_path: Path) -> None:
    recs = demo.generate_demo(
        tmp_path, seed=5, image_size=SMALL, train_normal=0, train_defective=1, test_normal=0, test_defective=0
    )
    _, mask, _ = demo.render(5, "train", 1, 0, SMALL)
    assert recs[0].mask_path is not None
    assert (load_mask(recs[0].mask_path) == mask).all()


def test_ordered_map_keeps_the_input_order_and_raises_the_first_error():
    """prepare and the demo generator decode and encode on every core through it; the records come back in
    input order whatever the threads finish first."""
    import time

    from exdd_core.runtime.parallel import ordered_map

    def slow_first(i: int) -> int:
        time.sleep(0.02 if i % 3 == 0 else 0.0)
        if i == 7:
            raise ValueError("seven")
        return i * i

    assert list(ordered_map(slow_first, range(7), threads=3)) == [i * i for i in range(7)]
    assert list(ordered_map(slow_first, range(5), threads=1)) == [i * i for i in range(5)]
    with pytest.raises(ValueError, match="seven"):
        list(ordered_map(slow_first, range(10), threads=2))
