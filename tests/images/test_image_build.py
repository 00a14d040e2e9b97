"""A real build and run of the image's app layers, on a CPU base made locally (no registry here).

Why the build goes through `docker buildx build` and not the docker SDK: the SDK (docker-py 7.2) talks to the
engine's classic build API, which has no BuildKit session: no `RUN --mount` (cache mounts, secrets), no
`--secret`, no `--build-context`; building Dockerfile.cpu through it fails with "the --mount option requires
BuildKit". So the tests build with the buildx CLI (as users do, through make) and use the SDK for what it
does well: engine checks, image inspection, saving an image to scan its layers. Jobs run through
`docker compose run`, as users run them, with compose.ci.yaml's host networking (no bridge may be created here).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from .dockerfiles import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TAG = "ci"
IMAGE = f"clinical-finetune-kit:{TAG}-cpu"
TOUCHED = f"clinical-finetune-kit:{TAG}-touched-cpu"
TORCH_WHEELS = Path(os.environ.get("CKIT_TORCH_WHEELS", "/opt/wheels"))
SYSTEM_CA = Path(os.environ.get("CKIT_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
# What the build context holds (.dockerignore's allow-list), for copying it to a scratch folder.
CONTEXT_ITEMS = ["Makefile", "stack.env", "Dockerfile.cpu", "Dockerfile.app", ".dockerignore", "docker", "requirements",
                 "pyproject.toml", "recipes", "checks", "kit", "pipeline"]


def run(args: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def cpu_base(docker_client) -> str:
    result = run(["bash", str(ROOT / "scripts/ci/docker-cpu-base.sh")], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> dict[str, str]:
    """A CA bundle (the system one, which pip here needs) carrying a unique marker."""
    folder = tmp_path_factory.mktemp("secrets")
    marker = f"ckit-secret-{uuid.uuid4().hex}"
    ca = folder / "ca.pem"
    # Text outside BEGIN/END blocks is ignored by PEM readers, so the bundle still works with the marker in it.
    ca.write_text((SYSTEM_CA.read_text() if SYSTEM_CA.is_file() else "") + f"\n{marker}-ca\n")
    return {"marker": marker, "ca": str(ca)}


def buildx(context: Path, base: str, secrets: dict[str, str], tag: str, vcs_ref: str = "ci-test") -> str:
    """Build the CPU image (Dockerfile.cpu's runtime, then the shared Dockerfile.app) in `context` through
    `make image-cpu` (what users run), on the local base, with the torch wheel folder and the CA secret; return
    BuildKit's plain progress log of both builds."""
    if not any(TORCH_WHEELS.glob("torch-2.13.0+cpu-*.whl")):
        pytest.skip(f"no torch 2.13.0+cpu wheel in {TORCH_WHEELS} (set CKIT_TORCH_WHEELS)")
    name, _, version = tag.rpartition(":")
    assert name == "clinical-finetune-kit" and version.endswith("-cpu"), tag
    args = ["make", "-s", "-C", str(context), "image-cpu", f"TAG={version[:-len('-cpu')]}", f"CPU_BASE={base}",
            f"TORCH_WHEELS={TORCH_WHEELS}", f"CA_BUNDLE={secrets['ca']}",
            f"VCS_REF={vcs_ref}", "BUILD_FLAGS=--network host --progress plain"]
    result = run(args, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    return result.stderr  # buildx writes its progress to stderr


@pytest.fixture(scope="module")
def built(docker_client, cpu_base, secrets) -> dict:
    log = buildx(ROOT, cpu_base, secrets, IMAGE)
    return {"image": docker_client.images.get(IMAGE), "log": log}


def test_image_metadata(built):
    image = built["image"]
    config = image.attrs["Config"]
    assert config["User"] not in ("", "root", "0", "0:0"), "the image must not run as root"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env["KIT_CACHE_DIR"] == "/cache/kit" and env["HF_HOME"] == "/cache/hf"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.revision"] == "ci-test"
    assert labels["io.github.clinical-finetune-kit.torch"] == "2.13.0+cpu"
    assert "org.opencontainers.image.source" in labels


def test_build_secrets_are_not_in_any_layer(docker_client, built, secrets):
    marker = secrets["marker"].encode()
    tail = b""
    size = 0
    # The whole image as `docker save` writes it (every layer, the config, the history).
    for chunk in docker_client.api.get_image(IMAGE, chunk_size=8 << 20):
        window = tail + chunk
        assert marker not in window, "a build secret was written into the image"
        tail = window[-len(marker):]
        size += len(chunk)
    assert size > 100 << 20, f"scanned only {size} bytes: not the whole image"
    for entry in built["image"].history():
        assert secrets["marker"] not in entry.get("CreatedBy", "")


def memlock_limit() -> int:
    """The most locked memory this engine may grant a container: our own hard limit (CI lacks CAP_SYS_RESOURCE)."""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return -1 if hard == resource.RLIM_INFINITY else hard


def image_id_for_compose() -> str:
    """KIT_IMAGE_ID as `make env` computes it (docker/compose-env.sh) for the image the jobs run."""
    result = run(["bash", "docker/compose-env.sh", "cpu", TAG, ""], timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())["KIT_IMAGE_ID"]


def compose(args: list[str], folders: dict[str, Path], uid: int, gid: int, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "KIT_VENDOR": "cpu", "KIT_TAG": TAG, "KIT_REGISTRY": "", "KIT_UID": str(uid),
           "KIT_GID": str(gid), "KIT_DATA_DIR": str(folders["data"]), "KIT_CACHE_HOST_DIR": str(folders["cache"]),
           "KIT_OUTPUT_DIR": str(folders["runs"]), "KIT_CI_MEMLOCK": str(memlock_limit()),
           "KIT_IMAGE_ID": image_id_for_compose()}
    base = ["docker", "compose", "-f", "compose.yaml", "-f", "compose.ci.yaml", "run", "--rm", "-T"]
    return run(base + args, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compose")
    out = {name: root / name for name in ("data", "cache", "runs")}
    for path in out.values():
        path.mkdir()
        path.chmod(0o777)  # the job runs as another UID below
    return out


# A UID that exists neither on the host nor in the image: outputs must still belong to it.
JOB_UID, JOB_GID = 4242, 4343


def test_compose_check_on_cpu(built, folders):
    result = compose(["check", "--json"], folders, JOB_UID, JOB_GID, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(result.stdout)}
    assert results["platform.torch"]["status"] == "pass"
    assert results["platform.torch"]["data"]["torch"] == "2.13.0+cpu"
    assert results["access.shm"]["status"] == "pass", "ipc: host should give the job the host's /dev/shm"
    assert not [name for name, r in results.items() if r["status"] == "fail"]


def test_compose_finetune_then_evaluate_on_the_embedded_default(built, folders):
    finetune = compose(["finetune", "--recipe", "recipes/demo-cpu.yaml", "--plain", "train.steps=2",
                        "eval.limit=8", "eval.before_training=false", "train.output_dir=runs/ci"],
                       folders, JOB_UID, JOB_GID, timeout=900)
    assert finetune.returncode == 0, finetune.stdout[-3000:] + finetune.stderr[-3000:]
    run_dir = folders["runs"] / "ci"
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").is_file(), sorted(p.name for p in run_dir.iterdir())
    assert adapter.stat().st_uid == JOB_UID, "outputs must belong to the invoking user"
    # The report names the image it ran in: compose passed the ID that compose-env.sh read from the engine.
    image = json.loads((run_dir / "report.json").read_text())["environment"]["image"]
    assert image["image_id"] == built["image"].id and image["manifest"]["vendor"] == "cpu"
    evaluate = compose(["evaluate", "--model", "smollm2-135m-instruct", "--adapter", "runs/ci/adapter",
                        "--data", "runs/ci/data/test.jsonl", "--output", "runs/ci/eval-cli", "--limit", "8",
                        "--scoring", "cloze"], folders, JOB_UID, JOB_GID, timeout=900)
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    metrics = json.loads((run_dir / "eval-cli" / "metrics.json").read_text())
    assert metrics, "empty metrics"
    predictions = (run_dir / "eval-cli" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 8
    # The demo model was converted once into the cache mount, not into the image or the output folder.
    assert any(folders["cache"].rglob("*.safetensors")), "no converted model in the cache folder"


def test_finetune_runs_with_no_network_at_all(docker_client, built, folders, tmp_path):
    # compose's default for the jobs is network_mode: none (patient data); CI's override uses the host network
    # only because compose would otherwise create one. Here the container gets no network interface but
    # loopback, through the SDK, and still fine-tunes (model from the image, cache from the mount).
    out = tmp_path / "runs"
    out.mkdir()
    out.chmod(0o777)
    logs = docker_client.containers.run(
        IMAGE, ["python", "-m", "pipeline", "finetune", "--recipe", "recipes/demo-cpu.yaml", "--plain",
                "train.steps=1", "eval.limit=4", "eval.before_training=false", "train.output_dir=runs/offline"],
        network_mode="none", user=f"{JOB_UID}:{JOB_GID}", remove=True, stdout=True, stderr=True,
        volumes={str(out): {"bind": "/opt/kit/runs", "mode": "rw"},
                 str(folders["cache"]): {"bind": "/cache", "mode": "rw"}})
    assert (out / "offline" / "adapter" / "adapter_config.json").is_file(), logs.decode()[-3000:]


STEP = re.compile(r"^#(\d+) \[(?:(\w[\w-]*) +)?(\d+)/(\d+)\] (.*)$", re.M)  # BuildKit pads "[app  3/10]"


def steps(log: str) -> dict[str, tuple[str, str, bool]]:
    """step id -> (stage, instruction, cached) from BuildKit's plain progress output, over every build in the log
    (make runs two: the runtime, then the app stage; each numbers its steps from #0)."""
    found: dict[str, tuple[str, str, bool]] = {}
    for index, build in enumerate(re.split(r"^(?=#0 building with)", log, flags=re.M)):
        these = {number: (stage or "", text, False) for number, stage, _, _, text in STEP.findall(build)}
        for number in re.findall(r"^#(\d+) CACHED$", build, re.M):
            if number in these:
                stage, text, _ = these[number]
                these[number] = (stage, text, True)
        found.update({f"{index}:{number}": value for number, value in these.items()})
    return found


def test_pipeline_change_rebuilds_only_the_app_code_layers(built, cpu_base, secrets, tmp_path, docker_client):
    context = tmp_path / "context"
    context.mkdir()
    for item in CONTEXT_ITEMS:
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, context / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, context / item)
    with open(context / "pipeline" / "__init__.py", "a") as handle:
        handle.write(f"\n# touched by {__name__} {uuid.uuid4().hex}\n")
    # A new commit too: the revision label must not invalidate the dependency layers.
    log = buildx(context, cpu_base, secrets, TOUCHED, vcs_ref="ci-test-next-commit")
    found = steps(log)
    assert found, log[-3000:]
    rebuilt = [(stage, text) for stage, text, cached in found.values() if not cached]
    # Every step below the app stage, and the app's dependency layers, came from the cache (FROM lines are
    # reported as loaded, not cached: they build nothing) ...
    for stage, text, cached in found.values():
        # The manifest step records the revision (kit/manifest.py), so it runs again for every commit, by design.
        expected = stage == "app" and ("COPY pipeline/" in text or "kit.manifest" in text)
        if not cached and not text.startswith("FROM ") and not expected:
            pytest.fail(f"rebuilt although only pipeline/ changed: [{stage}] {text}")
    cached_steps = [(stage, text) for stage, text, cached in found.values() if cached]
    assert any(stage == "torch" and "pip install" in text for stage, text in cached_steps), cached_steps
    assert any(stage == "app" and "--require-hashes" in text for stage, text in cached_steps), cached_steps
    # ... and the pipeline's own layer was rebuilt.
    assert rebuilt and all(stage == "app" and ("COPY pipeline/" in text or "kit.manifest" in text)
                           for stage, text in rebuilt if not text.startswith("FROM ")), rebuilt
    assert any("COPY pipeline/" in text for _, text in rebuilt), rebuilt
    touched = docker_client.images.get(TOUCHED)
    assert touched.id != docker_client.images.get(IMAGE).id
    assert touched.labels["org.opencontainers.image.revision"] == "ci-test-next-commit"
    docker_client.images.remove(TOUCHED)


def test_make_save_and_load_round_trip(docker_client, cpu_base, tmp_path):
    # On the small base image (same code path as the app image): save writes a checksummed archive, load
    # verifies the checksum first and refuses a corrupted archive.
    tag = "savetest"
    image = f"clinical-finetune-kit:{tag}-cpu"
    docker_client.images.get(cpu_base).tag(image)
    common = ["make", "-s", f"TAG={tag}", "VENDOR=cpu", f"DIST={tmp_path}"]
    saved = run([*common, "save"], timeout=600, cwd=ROOT)
    assert saved.returncode == 0, saved.stderr
    archive = tmp_path / f"clinical-finetune-kit-{tag}-cpu.tar.gz"
    assert archive.is_file() and (tmp_path / f"{archive.name}.sha256").is_file()
    docker_client.images.remove(image)
    loaded = run([*common, "load"], timeout=600, cwd=ROOT)
    assert loaded.returncode == 0, loaded.stderr
    assert docker_client.images.get(image).id == docker_client.images.get(cpu_base).id
    with open(archive, "r+b") as handle:  # flip one byte
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    corrupted = run([*common, "load"], timeout=600, cwd=ROOT)
    assert corrupted.returncode != 0 and "FAILED" in corrupted.stdout + corrupted.stderr
    docker_client.images.remove(image)
