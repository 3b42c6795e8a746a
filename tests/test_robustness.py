"""Bad input is refused loudly and precisely: params, image bytes, mismatched stores, stage errors."""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from exdd_core.data import load_image, load_mask
from exdd_core.evaluation.report import load_banks
from exdd_core.features import StoreWriter
from exdd_core.runtime import ExddError, InputError, MismatchError, ParamError
from exdd_core.runtime.params import load_params, validate

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")


def with_change(path: str, value) -> dict:
    p = copy.deepcopy(PARAMS)
    node = p
    *parents, leaf = path.split(".")
    for k in parents:
        node = node[k]
    node[leaf] = value
    return p


def test_committed_params_are_valid():
    assert validate(copy.deepcopy(PARAMS)) == PARAMS


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("bank.normal_ratio", 0.0, r"bank\.normal_ratio = 0\.0 .*> 0"),
        ("bank.defect_ratio", 1.5, r"bank\.defect_ratio = 1\.5"),
        ("synth.count", -1, r"synth\.count = -1 .*>= 0"),
        ("synth.count", "many", r"synth\.count = 'many' .*integer"),
        ("scoring.neighbors", 0, r"scoring\.neighbors = 0 .*>= 1"),
        ("scoring.sigma", -1.0, r"scoring\.sigma = -1\.0"),
        ("scoring.mode", "best", r"scoring\.mode = 'best' .*'paper', 'same_patch', 'max_ratio'"),
        ("data.image_size", [632], r"data\.image_size .*\[H, W\]"),
        ("data.image_size", [16, 16], r"data\.image_size .*between 32 and 8192"),
        ("features.patch_size", 2, r"features\.patch_size = 2 .*odd"),
        ("backbone.weights", "weights.txt", r"backbone\.weights"),
        ("backbone.layers", [3, 2], r"backbone\.layers"),
        ("synth.diff_threshold", True, r"synth\.diff_threshold = True"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(key, value, expected):
    with pytest.raises(ParamError, match=expected):
        validate(with_change(key, value))


def test_unknown_key_suggests_the_right_one():
    p = copy.deepcopy(PARAMS)
    p["synth"]["cout"] = 150
    with pytest.raises(ParamError, match=r"unknown key synth\.cout \(did you mean synth\.count\?\)"):
        validate(p)
    p = copy.deepcopy(PARAMS)
    del p["scoring"]["eps"]
    with pytest.raises(ParamError, match=r"missing key scoring\.eps"):
        validate(p)


def test_broken_yaml_is_a_param_error(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("seed: [unclosed\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        load_params(f)


def test_stage_with_bad_params_exits_cleanly_before_work(tmp_path):
    bad = with_change("bank.normal_ratio", 2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    env = {**os.environ, "PYTHONPATH": str(REPO), "EXDD_NO_PROGRESS": "1"}
    p = subprocess.run(
        [sys.executable, str(REPO / "stages" / "prepare.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1
    assert "bank.normal_ratio = 2" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "data").exists()  # nothing written


# -- fuzzing: only the project's own error type may escape -------------------------------------------------

leaf_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5000), max_size=3),
)


def _paths(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        out += _paths(v, key) if isinstance(v, dict) else [key]
    return out


LEAVES = _paths(PARAMS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([*LEAVES, "synth.cout", "extra"]), leaf_values), max_size=4))
def test_fuzz_params_validator(changes):
    p = copy.deepcopy(PARAMS)
    for key, value in changes:
        node = p
        *parents, leaf = key.split(".")
        for k in parents:
            node = node[k] if isinstance(node.get(k), dict) else node.setdefault(k, {})
        node[leaf] = value
    try:
        validate(p)
    except ParamError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_image_and_mask_loader_with_random_bytes(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("fuzz") / "x.png"
    f.write_bytes(data)
    for fn in (load_image, load_mask):
        try:
            fn(f, (16, 8))
        except InputError:
            pass


MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK"]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(MODES),
    st.integers(1, 20),
    st.integers(1, 20),
    st.sampled_from(["PNG", "TIFF", "BMP", "JPEG"]),
    st.integers(0, 2**31 - 1),
)
def test_fuzz_loader_with_random_small_images(tmp_path_factory, mode, h, w, fmt, seed):
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    try:
        img = base.convert(mode)
        buf = io.BytesIO()
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # PIL cannot write this mode in this format: nothing to test
    f = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
    f.write_bytes(buf.getvalue())
    try:
        arr = load_image(f, (12, 10))
    except InputError:
        return
    assert arr.shape == (12, 10, 3) and arr.dtype == np.uint8
    try:
        m = load_mask(f, (12, 10))
    except InputError:
        return
    assert m.shape == (12, 10) and m.dtype == bool


# -- mismatched artifacts ----------------------------------------------------------------------------------

BASE_ATTRS = {
    "backbone": "wide_resnet50_2",
    "weights_id": "random(seed=0, zero_init_last=True)",
    "layers": [2, 3],
    "patch_size": 3,
    "aggregation": "padded_bilinear",
    "image_size": [632, 224],
    "grid": [79, 28],
    "stored_dim": 4,
    "projection_seed": None,
    "dtype": "float32",
}


def _store(path: Path, attrs: dict) -> Path:
    with StoreWriter(path, 4, "float32", attrs) as w:
        w.add("a", np.ones((3, 4), np.float32))
    return path


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("backbone", "resnet18"),
        ("layers", [1, 2]),
        ("image_size", [316, 112]),
        ("projection_seed", 7),
        ("stored_dim", 128),
        ("weights_id", "imagenet(timm default pretrained tag)"),
    ],
)
def test_mismatched_stores_are_refused_naming_the_key(tmp_path, key, value):
    test = _store(tmp_path / "test.zarr", BASE_ATTRS)
    normal = _store(tmp_path / "normal.zarr", BASE_ATTRS)
    defect = _store(tmp_path / "defect.zarr", {**BASE_ATTRS, key: value})
    load_banks(normal, _store(tmp_path / "ok.zarr", BASE_ATTRS), test)
    with pytest.raises(MismatchError, match=rf"defect bank.*{key}: "):
        load_banks(normal, defect, test)


def test_every_project_error_is_an_exdd_error():
    for cls in (InputError, ParamError, MismatchError):
        assert issubclass(cls, ExddError)


def _stage(tmp_path: Path, stage: str, params: dict) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy2(REPO / "paths.yaml", tmp_path / "paths.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO), "EXDD_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / stage)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _mvtec(root: Path, corrupt: str | None = None) -> None:
    rng = np.random.default_rng(0)

    def img(path: Path, size=(40, 30)) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)

    for i in range(2):
        img(root / "train" / "good" / f"{i:03d}.png")
        img(root / "test" / "good" / f"{i:03d}.png")
        img(root / "test" / "scratch" / f"{i:03d}.png")
        mask = np.zeros((40, 30), np.uint8)
        mask[5:9, 5:12] = 255
        (root / "ground_truth" / "scratch").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    if corrupt:
        (root / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n truncated")


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        ("train/good/001.png", r"train/good/001\.png: cannot read"),
        ("ground_truth/scratch/000_mask.png", r"000_mask\.png: cannot read"),
    ],
)
def test_prepare_on_bad_data_names_the_file_without_traceback(tmp_path, corrupt, expected):
    _mvtec(tmp_path / "mvtec", corrupt)
    params = copy.deepcopy(PARAMS)
    params["data"].update(source="mvtec", root=str(tmp_path / "mvtec"), image_size=[64, 32])
    p = _stage(tmp_path, "prepare.py", params)
    assert p.returncode == 1, p.stderr
    assert re.search(expected, " ".join(p.stderr.split())), p.stderr
    assert "Traceback" not in p.stderr
    prepared = tmp_path / "data" / "prepared"
    assert not prepared.exists() or not any(x.name.startswith(".") for x in prepared.iterdir())


def test_mvtec_without_defective_training_images_prepares_an_empty_group(tmp_path):
    _mvtec(tmp_path / "mvtec")
    params = copy.deepcopy(PARAMS)
    params["data"].update(source="mvtec", root=str(tmp_path / "mvtec"), image_size=[64, 32])
    p = _stage(tmp_path, "prepare.py", params)
    assert p.returncode == 0, p.stderr
    prepared = tmp_path / "data" / "prepared"
    assert (prepared / "train_defective" / "manifest.csv").read_text().strip() == "id,split,label,image,mask"
    assert len((prepared / "test" / "manifest.csv").read_text().splitlines()) == 1 + 4
    # synthesis has no real masks to paint into: it paints into generated ones (synth.masks: auto) ...
    p = _stage(tmp_path, "synthesize.py", params)
    assert p.returncode == 0 and "generated masks" in " ".join(p.stderr.split()), p.stderr
    # ... and when real masks are demanded, it says so clearly, without a traceback
    params["synth"]["masks"] = "real"
    p = _stage(tmp_path, "synthesize.py", params)
    assert p.returncode == 1 and "synth.masks: generated" in " ".join(p.stderr.split()), p.stderr
    assert "Traceback" not in p.stderr
