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
