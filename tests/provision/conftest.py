"""Fixtures for the provisioning tests: fake vendor repositories served on 127.0.0.1 for the whole session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the provision package

from . import fake_repo
from .provision_harness import chroot_skip_reason


@pytest.fixture(scope="session")
def fake_repos(tmp_path_factory):
    reason = chroot_skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("fake-repos")
    repos = fake_repo.build(root / "www", os.uname().release)
    fake_repo.serve(repos, root / "http.log")
    yield repos
    fake_repo.stop(repos)
