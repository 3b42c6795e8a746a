"""Test-wide settings: never reach the network, one torch thread, DVC quiet, a git identity for `dvc exp`, and
a runner cache of the session's own (never the user's ~/.cache/exdd; subprocesses inherit it)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GIT_AUTHOR_NAME", "exdd-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@exdd.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "exdd-tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@exdd.invalid")
os.environ["EXDD_CACHE_DIR"] = tempfile.mkdtemp(prefix="exdd-test-cache-")
atexit.register(shutil.rmtree, os.environ["EXDD_CACHE_DIR"], True)

import torch  # noqa: E402 - after the environment above, which torch and its imports read

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """(root, env, first repro output) of the one tiny DVC project the slow tests share."""
    from tests.tiny_project import build_tiny_project

    root = tmp_path_factory.mktemp("exdd-project")
    env, out = build_tiny_project(root)
    return root, env, out
