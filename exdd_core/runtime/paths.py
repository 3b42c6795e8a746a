"""The pipeline's folders, read from paths.yaml: the one place a path is written. dvc.yaml loads the same file
(`vars`), so a stage script and its dvc.yaml entry cannot disagree on where a stage reads or writes."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.params import read_yaml

PATHS_FILE = Path("paths.yaml")


@dataclass(frozen=True)
class PipelinePaths:
    """The folders of paths.yaml, and the names the library gives to what is inside them."""

    prepared: Path
    synthetic: Path
    feedback: Path
    features: Path
    banks: Path
    fusion: Path
    eval: Path
    metrics: Path

    def manifest(self, group: str) -> Path:
        """A prepared group's manifest (group: train_normal, train_defective, test)."""
        return self.prepared / group / "manifest.csv"

    def store(self, which: str) -> Path:
        """The patch-feature store of `which` (normal, defect, test, feedback_normal, feedback_defect)."""
        return self.features / f"{which}.zarr"

    def bank(self, which: str) -> Path:
        """A memory bank: normal (M_N) or defect (M_P)."""
        return self.banks / f"{which}.zarr"

    def verdicts(self, verdict: str) -> Path:
        """The folder of one verdict from the line (defect or normal), with its manifest.csv."""
        return self.feedback / verdict

    @property
    def fusion_file(self) -> Path:
        return self.fusion / "fusion.json"


def load_paths(path: Path | str = PATHS_FILE) -> PipelinePaths:
    """paths.yaml's `paths:` mapping, every key present and a non-empty string, or ParamError naming the file."""
    path = Path(path)
    tree = read_yaml(path, "not found; it names the pipeline's folders (run from the project root)")
    given = tree.get("paths") if isinstance(tree, dict) else None
    names = [f.name for f in fields(PipelinePaths)]
    if not isinstance(given, dict):
        raise ParamError(f"{path}: expected a mapping `paths:` with keys {', '.join(names)}")
    missing = [n for n in names if not isinstance(given.get(n), str) or not given[n].strip()]
    unknown = sorted(set(given) - set(names))
    if missing or unknown:
        raise ParamError(
            f"{path}: paths.{', paths.'.join(missing or unknown)} "
            + ("missing or empty" if missing else f"unknown; the keys are {', '.join(names)}")
        )
    return PipelinePaths(**{n: Path(given[n]) for n in names})
