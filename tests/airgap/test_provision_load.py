"""Provisioning an air-gapped node: the tarball from `make save` is loaded and its recorded image ID checked."""

from __future__ import annotations

import json

import pytest


def test_provisioning_checks_the_recorded_image_id_after_loading(tmp_path):
    """provision/ loads the tarball on the node, then fails unless the image has the ID `make save` recorded."""
    pytest.importorskip("pyinfra")
    from provision.deploys.verify import verify
    from provision.facts import EXIT_MARKER
    from tests.provision.fakehost import run_deploy

    tarball = tmp_path / "clinical-finetune-kit_latest-rocm.tar.gz"
    tarball.write_text("not really an image")
    image_id = "sha256:" + "ab" * 32
    (tmp_path / "clinical-finetune-kit_latest-rocm.json").write_text(json.dumps({"id": image_id}))
    run = run_deploy("mi300x", verify, data={"verify_gpus": False, "kit_image_tarball": str(tarball)},
                     responses={"docker run": f"{EXIT_MARKER}0"})
    assert run.ran("docker load -i /var/lib/clinical-kit/images/clinical-finetune-kit_latest-rocm.tar.gz")
    assert run.ran(f"= {image_id} ||")
