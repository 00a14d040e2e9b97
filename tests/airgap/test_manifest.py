"""The image manifest (kit/manifest.py): what Dockerfile.app writes and what every run report records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kit import manifest

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_records_stack_digests_locks_and_packages(tmp_path):
    out = tmp_path / "opt" / "manifest.json"
    stack = "CPU_BASE=debian:bookworm-slim@sha256:7b14 LOCAL_BASE=ckit-ci/bookworm:3.11 CPU_TORCH_VERSION=2.13.0+cpu"
    code = subprocess.run([sys.executable, "-m", "kit.manifest", "--vendor", "cpu", "--stack", stack,
                           "--revision", "abc123", "--lock-dir", str(ROOT / "requirements"), "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    data = json.loads(out.read_text())
    assert data["vendor"] == "cpu" and data["revision"] == "abc123"
    assert data["stack"]["CPU_TORCH_VERSION"] == "2.13.0+cpu"
    # A tag without a digest is recorded as unpinned (None), not silently dropped.
    assert data["base_digests"] == {"CPU_BASE": "sha256:7b14", "LOCAL_BASE": None}
    lock = ROOT / "requirements" / "image-cpu.lock"
    assert data["locks"]["image-cpu.lock"] == manifest.sha256_file(lock)
    assert "image-demo.lock" in data["locks"]
    import torch

    assert data["packages"]["torch"] == torch.__version__


def test_bad_stack_item_is_named():
    with pytest.raises(ValueError, match="'oops'.*KEY=value"):
        manifest.parse_stack_arg("CPU_BASE=x oops")


def test_image_facts_none_outside_an_image(tmp_path):
    assert manifest.image_facts({"KIT_IMAGE_MANIFEST": str(tmp_path / "missing.json")}) is None


def test_image_facts_read_the_manifest_and_image_id(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"schema": 1, "vendor": "rocm"}\n')
    facts = manifest.image_facts({"KIT_IMAGE_MANIFEST": str(path), "KIT_IMAGE_ID": "sha256:feed"})
    assert facts["manifest"]["vendor"] == "rocm" and facts["image_id"] == "sha256:feed"
    assert facts["manifest_sha256"] == manifest.sha256_file(path)
    # compose passes KIT_IMAGE_ID empty when it did not know the ID: recorded as unknown, not as "".
    assert manifest.image_facts({"KIT_IMAGE_MANIFEST": str(path), "KIT_IMAGE_ID": ""})["image_id"] is None


def test_run_report_carries_the_image_manifest(tmp_path, monkeypatch):
    import torch

    from pipeline.report import build as report

    path = tmp_path / "manifest.json"
    path.write_text('{"schema": 1, "vendor": "cpu", "revision": "abc"}\n')
    monkeypatch.setenv("KIT_IMAGE_MANIFEST", str(path))
    env = report.environment_facts(torch.device("cpu"))
    assert env["image"]["manifest"]["revision"] == "abc"
    assert env["libraries"]["torch"] == torch.__version__


def test_dockerfile_app_writes_the_manifest_and_labels():
    text = (ROOT / "Dockerfile.app").read_text()
    assert "python -m kit.manifest" in text and "/opt/kit/manifest.json" in text
    assert 'io.github.clinical-finetune-kit.stack="${KIT_STACK}"' in text
    makefile = (ROOT / "Makefile").read_text()
    assert "KIT_STACK=" in makefile and "KIT_VENDOR=" in makefile
