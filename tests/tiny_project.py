"""A tiny DVC project (resnet18 at 128 x 64, a handful of demo images), built and reproduced once per test
session and shared by the slow tests: test_cli.py reads it, test_pipeline_dvc.py then experiments on it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from exdd_core.runtime.params import READS_ENV

REPO = Path(__file__).resolve().parents[1]
COPY = [
    "dvc.yaml",
    "params.yaml",
    "paths.yaml",
    "stages",
    "exdd_core",
    "data/raw",
    "data/feedback",
    ".dvc/config",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
]
ALL_STAGES = {
    "prepare",
    "synthesize",
    "features_normal",
    "features_defect",
    "features_test",
    "features_feedback",
    "bank_normal",
    "bank_defect",
    "fit_fusion",
    "evaluate",
}


def tiny_params(params: dict) -> dict:
    """The smallest profile that still exercises every stage (the default EfficientNet-Lite0 with its installed
    ImageNet weights, at 128 x 64, a handful of images)."""
    params["data"]["image_size"] = [128, 64]
    params["data"]["demo"] = dict(train_normal=6, train_defective=3, test_normal=4, test_defective=4)
    params["synth"]["count"] = 2
    params["bank"]["min_size"] = 20
    params["eval"]["heatmaps"] = 2
    return params


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{out[-4000:]}"
    return out


def ran_stages(output: str) -> set[str]:
    """Stages DVC says it ran (not skipped, not restored from the run-cache)."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def reads_dir(root: Path) -> Path:
    """Where the stages of the project at `root` record the params they read: outside the project."""
    return root.parent / f"{root.name}-params-read"


def build_tiny_project(root: Path, overrides: dict[str, dict] | None = None) -> tuple[dict[str, str], str]:
    """Copy the project into `root` with tiny params (plus `overrides`: section -> keys), commit, `dvc repro`,
    commit again. Returns the environment to run its commands with, and the output of the first repro."""
    for name in COPY:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = tiny_params(yaml.safe_load((root / "params.yaml").read_text()))
    for section, values in (overrides or {}).items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "EXDD_NO_PROGRESS": "1",
        "OMP_NUM_THREADS": "1",
        READS_ENV: str(reads_dir(root)),  # each stage records the params it reads (runtime.params)
    }
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "tiny exdd project"], root, env)
    out = run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "first repro"], root, env)
    return env, out


def exdd(args: list[str], root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The console script's code path (`exdd` = exdd_core.serve.cli:run) in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "exdd_core.serve.cli", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
