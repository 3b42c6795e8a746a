"""paths.yaml is the one place the pipeline's folders are written: dvc.yaml and the stage scripts both read it."""

import re
from pathlib import Path

import pytest
import yaml

from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.paths import PipelinePaths, load_paths

REPO = Path(__file__).resolve().parents[1]


def test_the_project_paths_load_and_name_what_is_inside():
    paths = load_paths(REPO / "paths.yaml")
    assert paths.bank("normal") == Path("banks/normal.zarr")
    assert paths.store("test") == Path("features/test.zarr")
    assert paths.manifest("train_defective") == Path("data/prepared/train_defective/manifest.csv")
    assert paths.fusion_file == Path("fusion/fusion.json")
    assert paths.verdicts("defect") == Path("data/feedback/defect")


def test_dvc_yaml_reads_paths_yaml_and_no_stage_script_writes_a_path_of_its_own():
    dvc_text = (REPO / "dvc.yaml").read_text()
    assert yaml.safe_load(dvc_text)["vars"] == ["paths.yaml"]
    used = set(re.findall(r"\$\{paths\.(\w+)\}", dvc_text))
    assert used <= set(PipelinePaths.__dataclass_fields__) and {"banks", "features", "eval"} <= used
    folders = [str(v) for v in yaml.safe_load((REPO / "paths.yaml").read_text())["paths"].values()]
    for script in (REPO / "stages").glob("*.py"):
        text = script.read_text()
        written = [f for f in folders if f'Path("{f}' in text or f'"{f}/' in text]
        assert not written, f"{script.name} writes {written} itself; read them from load_paths()"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("paths: [a, b]", "expected a mapping"),
        ("paths:\n  banks: banks\n", "missing or empty"),
        (
            "{paths: {" + ", ".join(f"{k}: x" for k in PipelinePaths.__dataclass_fields__) + ", extra: y}}",
            "unknown",
        ),
        ("paths: {banks: [", "not valid YAML"),
    ],
)
def test_a_broken_paths_file_is_refused_naming_it(tmp_path, text, message):
    f = tmp_path / "paths.yaml"
    f.write_text(text)
    with pytest.raises(ParamError, match=message) as e:
        load_paths(f)
    assert str(f) in str(e.value)


def test_a_missing_paths_file_says_where_to_run_from(tmp_path):
    with pytest.raises(ParamError, match="project root"):
        load_paths(tmp_path / "paths.yaml")
