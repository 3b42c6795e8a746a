"""Image and mask loading: every PIL mode becomes uint8 RGB, every unreadable file an InputError naming it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exdd_core.data.imageio import image_size_of, load_image, load_mask, save_png
from exdd_core.runtime import InputError


def _rgb(h: int = 12, w: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.arange(96, dtype=np.uint8).reshape(12, 8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (12, 8, 3)
    assert (out == grey[:, :, None]).all()


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgb = _rgb()
    alpha = np.zeros((12, 8, 1), np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA").save(tmp_path / "a.png")
    assert (load_image(tmp_path / "a.png") == rgb).all()


def test_sixteen_bit_is_scaled_to_eight(tmp_path: Path) -> None:
    grey16 = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as img:
        assert img.mode.startswith("I")
    out = load_image(tmp_path / "s.png")
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


def test_palette_and_la_images_load(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("LA").save(tmp_path / "la.png")
    assert load_image(tmp_path / "p.png").shape == (12, 8, 3)
    assert load_image(tmp_path / "la.png").shape == (12, 8, 3)


def test_resize_is_h_w(tmp_path: Path) -> None:
    save_png(tmp_path / "x.png", _rgb(12, 8))
    assert load_image(tmp_path / "x.png", (30, 10)).shape == (30, 10, 3)
    assert image_size_of(tmp_path / "x.png") == (12, 8)


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "missing"])
def test_bad_files_raise_input_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"bad_{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        save_png(tmp_path / "ok.png", np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        data = (tmp_path / "ok.png").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not an image\n")
    with pytest.raises(InputError, match=re.escape(path.name)):
        load_image(path)
    with pytest.raises(InputError, match=re.escape(path.name)):
        load_mask(path)


def test_mask_any_nonzero_and_channel_max(tmp_path: Path) -> None:
    m = np.zeros((6, 5, 3), np.uint8)
    m[1, 1, 2] = 1  # a faint value in one channel still counts
    m[4, 3, 0] = 255
    save_png(tmp_path / "m.png", m)
    mask = load_mask(tmp_path / "m.png")
    assert mask.dtype == bool
    assert mask.sum() == 2 and mask[1, 1] and mask[4, 3]


def test_mask_resize_stays_binary(tmp_path: Path) -> None:
    m = np.zeros((10, 10), bool)
    m[2:5, 2:5] = True
    save_png(tmp_path / "m.png", m)
    out = load_mask(tmp_path / "m.png", (20, 20))
    assert out.shape == (20, 20) and out.dtype == bool and out.sum() == 36


def test_mask_size_mismatch_raises(tmp_path: Path) -> None:
    save_png(tmp_path / "m_GT.png", np.zeros((10, 9), np.uint8))
    with pytest.raises(InputError, match=r"m_GT\.png.*10x9.*12x8"):
        load_mask(tmp_path / "m_GT.png", image_size_of_source=(12, 8))


def test_save_png_roundtrip_leaves_no_temp_files(tmp_path: Path) -> None:
    img = _rgb()
    save_png(tmp_path / "sub" / "x.png", img)
    assert (load_image(tmp_path / "sub" / "x.png") == img).all()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]


def test_thirty_two_bit_and_float_modes(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I").save(tmp_path / "i.tif")
    assert load_image(tmp_path / "i.tif")[0, :, 0].tolist() == [0, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    assert load_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]
