"""Offline runs: `make demo` (scripts/demo.sh) passes with the network cut off.

The air gap is stood in for by an empty network namespace (`unshare -n`: not even loopback is up), so any code path
that tries the hub, a telemetry endpoint or a package index fails there instead of quietly succeeding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_switches_hub_and_telemetry_off():
    text = (ROOT / "scripts" / "demo.sh").read_text()
    for switch in ("HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "HF_HUB_DISABLE_TELEMETRY=1", "DO_NOT_TRACK=1"):
        assert switch in text, f"scripts/demo.sh does not set {switch}"


def test_image_sets_the_same_switches():
    text = (ROOT / "Dockerfile.app").read_text()
    for switch in ("HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "HF_HUB_DISABLE_TELEMETRY=1", "DO_NOT_TRACK=1"):
        assert switch in text, f"Dockerfile.app does not set {switch}"


def _can_unshare_net() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_demo_passes_in_an_empty_network_namespace(tmp_path):
    """A shortened demo (2 steps, 8 questions; ~2-8 min on 2 shared cores) with no network interface at all."""
    if not _can_unshare_net():
        pytest.skip("needs `unshare -n` (root or user namespaces) to cut the network off")
    probe = subprocess.run(["unshare", "-n", "python3", "-c",
                            "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)"],
                           capture_output=True, text=True)
    assert probe.returncode != 0, "the namespace still reaches the network: the test would prove nothing"
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    result = subprocess.run(
        ["unshare", "-n", "bash", "scripts/demo.sh", "train.steps=2", "train.checkpoint_every=0",
         "eval.before_training=false", "eval.limit=8", f"train.output_dir={out}", "--plain"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed" and report["steps"] == 2
    assert report["eval"]["after"]["count"] == 8
