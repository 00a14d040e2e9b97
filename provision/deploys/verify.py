"""Reboot when the driver or kernel arguments changed, then check GPUs and run the kit's checks in its image."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server
from pyinfra.operations.util import any_changed

from provision.facts import DockerImageId
from provision.operations import docker_image_pulled, gpus_match, kit_checks_pass
from provision.settings import NodeSettings

REMOTE_IMAGE_DIR = "/var/lib/clinical-kit/images"


@deploy("Reboot if the kernel side changed")
def reboot_if_needed(settings: NodeSettings, changes: list[OperationMeta]) -> None:
    if settings.in_container_or_chroot or not changes:
        return
    # server.reboot waits for the host to come back (up to reboot_timeout seconds) before the run continues.
    server.reboot(
        name="Reboot to load the new driver / kernel arguments",
        reboot_timeout=settings.reboot_timeout,
        _if=any_changed(*changes),
    )


@deploy("Verify the node")
def verify(settings: NodeSettings) -> None:
    if settings.verify_gpus:
        gpus_match(
            name="GPUs match the host's group",
            platform=settings.platform,
            expected_count=settings.expected_gpu_count,
            expected_archs=list(settings.expected_gpu_archs),
        )
    if not settings.verify_kit_image:
        return
    if settings.kit_image_tarball:
        # Air-gapped sites: the image travels as a `docker save` tarball from the control machine.
        remote = f"{REMOTE_IMAGE_DIR}/{Path(settings.kit_image_tarball).name}"
        upload = files.put(name="Kit image tarball on the host", src=settings.kit_image_tarball, dest=remote)

        def image_missing_or_new_tarball() -> bool:
            return upload.did_change() or host.get_fact(DockerImageId, image=settings.kit_image) is None

        commands = [f"docker load -i {remote}"]
        recorded_id = _saved_image_id(Path(settings.kit_image_tarball))
        if recorded_id:
            # `make save` recorded the image ID beside the tarball: the node must end up with exactly that image.
            commands.append(f"test \"$(docker image inspect --format '{{{{.Id}}}}' {settings.kit_image})\" = "
                            f"{recorded_id} || {{ echo '{settings.kit_image} loaded with another ID than "
                            f"{recorded_id} (make save record)' >&2; exit 1; }}")
        server.shell(name=f"Load {settings.kit_image}", commands=commands, _if=image_missing_or_new_tarball)
    else:
        docker_image_pulled(name=f"{settings.kit_image} is pulled", image=settings.kit_image)
    kit_checks_pass(
        name="The kit's checks pass in its image",
        image=settings.kit_image,
        platform=settings.platform,
        checks_command=settings.kit_checks_command,
    )


def _saved_image_id(tarball: Path) -> str | None:
    """The image ID `make save` wrote into NAME.json beside NAME.tar.gz (scripts/airgap/image-tarball.sh), if any."""
    name = tarball.name.removesuffix(".gz").removesuffix(".tar")
    record = tarball.with_name(f"{name}.json")
    if not record.is_file():
        return None
    image_id = str(json.loads(record.read_text()).get("id", ""))
    # Only a well-formed ID goes into the shell command.
    return image_id if re.fullmatch(r"sha256:[0-9a-f]{64}", image_id) else None
