"""Test-wide settings: never reach the network, one torch thread, DVC quiet, a git identity for `dvc exp`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GIT_AUTHOR_NAME", "exdd-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@exdd.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "exdd-tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@exdd.invalid")

import torch

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """(root, env, first repro output) of the one tiny DVC project the slow tests share."""
    from tests.tiny_project import build_tiny_project

    root = tmp_path_factory.mktemp("exdd-project")
    env, out = build_tiny_project(root)
    return root, env, out
