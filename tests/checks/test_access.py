import os

import pytest

from checks import access
from checks import thresholds as T
from checks.core import FAIL, PASS, SKIP, WARN

from .conftest import H200, MI300X, make_ctx


@pytest.fixture
def fake_dev(tmp_path, monkeypatch):
    """An empty fake /dev; tests create the nodes they need as plain files."""
    dev = tmp_path / "dev"
    (dev / "dri").mkdir(parents=True)
    monkeypatch.setattr(access, "DEV", dev)
    return dev


def amd_nodes(dev, gid=109, mode=0o660):
    for path in (dev / "kfd", dev / "dri" / "renderD128"):
        path.write_text("")
        os.chown(path, 0, gid)
        os.chmod(path, mode)


# --- access.devices ---

def test_devices_pass_when_amd_nodes_exist_and_open(fake_dev):
    amd_nodes(fake_dev)
    res = access.devices(make_ctx("hip", (MI300X,), runtime="6.0"))
    assert res.status == PASS and res.value == "2 nodes open"


def test_devices_fail_when_kfd_is_missing(fake_dev):
    (fake_dev / "dri" / "renderD128").write_text("")
    res = access.devices(make_ctx("hip", (), runtime="6.0"))
    assert res.status == FAIL and "missing /dev/kfd" in res.detail and "--device /dev/kfd" in res.hint


def test_devices_only_warn_when_torch_uses_the_gpus_anyway(fake_dev):
    res = access.devices(make_ctx("cuda", (H200,), runtime="12.1"))
    assert res.status == WARN and "/dev/nvidiactl" in res.detail


def test_devices_fail_when_a_node_does_not_open(fake_dev, monkeypatch):
    amd_nodes(fake_dev)
    monkeypatch.setattr(access, "try_open", lambda p: "Permission denied" if p.name == "kfd" else None)
    res = access.devices(make_ctx("hip", (), runtime="6.0"))
    assert res.status == FAIL and "/dev/kfd" in res.detail and "Permission denied" in res.detail
    assert "access.groups" in res.hint


def test_devices_nvidia_nodes(fake_dev):
    for name in ("nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1"):
        (fake_dev / name).write_text("")
    res = access.devices(make_ctx("cuda", (H200,), runtime="12.1"))
    assert res.status == PASS and res.value == "4 nodes open"


def test_devices_skip_without_any_gpu_vendor(fake_dev, no_default_build_info):
    assert access.devices(make_ctx()).status == SKIP


# --- access.groups ---

def test_groups_fail_on_render_gid_mismatch(fake_dev, monkeypatch):
    amd_nodes(fake_dev, gid=109)
    monkeypatch.setattr(access, "group_name", lambda gid: None)  # 109 has no name inside the image
    ctx = make_ctx("hip", (MI300X,), runtime="6.0")
    ctx.cache["creds"] = (1000, frozenset({1000, 44}))
    res = access.groups(ctx)
    assert res.status == FAIL
    assert "GID 109 which has no name in this image's /etc/group" in res.detail
    assert "--group-add 109" in res.hint


def test_groups_name_the_image_render_group_when_it_differs(fake_dev, monkeypatch):
    amd_nodes(fake_dev, gid=109)
    monkeypatch.setattr(access, "group_name", lambda gid: {109: "ssl-cert", 104: "render"}.get(gid))
    monkeypatch.setattr(access, "group_gid", lambda name: {"render": 104}.get(name))
    ctx = make_ctx("hip", (MI300X,), runtime="6.0")
    ctx.cache["creds"] = (1000, frozenset({1000, 104}))
    res = access.groups(ctx)
    assert res.status == FAIL and "this image's 'render' group is GID 104" in res.detail


def test_groups_pass_for_members_and_for_root(fake_dev, monkeypatch):
    amd_nodes(fake_dev, gid=109)
    monkeypatch.setattr(access, "group_name", lambda gid: "render")
    ctx = make_ctx("hip", (MI300X,), runtime="6.0")
    ctx.cache["creds"] = (1000, frozenset({1000, 109}))
    assert access.groups(ctx).status == PASS
    ctx.cache["creds"] = (0, frozenset({0}))
    res = access.groups(ctx)
    assert res.status == PASS and "root" in res.detail


def test_groups_pass_for_world_accessible_nodes(fake_dev):
    amd_nodes(fake_dev, gid=109, mode=0o666)
    ctx = make_ctx("hip", (MI300X,), runtime="6.0")
    ctx.cache["creds"] = (1000, frozenset({1000}))
    assert access.groups(ctx).status == PASS


def test_groups_skip_without_nodes(fake_dev, no_default_build_info):
    assert access.groups(make_ctx()).status == SKIP


# --- access.hsa_override and access.visible_devices ---

def test_hsa_override_pass_unset_warn_set():
    assert access.hsa_override(make_ctx()).status == PASS
    res = access.hsa_override(make_ctx(env={"HSA_OVERRIDE_GFX_VERSION": "11.0.0"}))
    assert res.status == WARN and "unset HSA_OVERRIDE_GFX_VERSION" in res.hint


def test_visible_devices():
    assert access.visible_devices(make_ctx()).status == PASS
    assert access.visible_devices(make_ctx(env={"CUDA_VISIBLE_DEVICES": "0,1"})).status == PASS
    res = access.visible_devices(make_ctx(env={"CUDA_VISIBLE_DEVICES": ""}))
    assert res.status == WARN and "hides every GPU" in res.detail
    amd = make_ctx("hip", (MI300X,), runtime="6.0", env={"CUDA_VISIBLE_DEVICES": "0", "HIP_VISIBLE_DEVICES": "1"})
    res = access.visible_devices(amd)
    assert res.status == WARN and "HIP_VISIBLE_DEVICES" in res.hint


# --- access.shm and access.disk ---

@pytest.mark.parametrize("size, status", [(64 * 1024**2, FAIL), (2 * T.GIB, WARN), (16 * T.GIB, PASS)])
def test_shm_thresholds(monkeypatch, size, status):
    monkeypatch.setattr(access, "filesystem_size", lambda path: size)
    res = access.shm(make_ctx())
    assert res.status == status
    if status == FAIL:
        assert res.value == "64 MiB" and "--shm-size" in res.hint


def test_shm_fail_when_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(access, "SHM", tmp_path / "no-shm")
    assert access.shm(make_ctx()).status == FAIL


def test_shm_real_measurement_is_positive():
    assert access.shm(make_ctx()).data["bytes"] > 0


@pytest.mark.parametrize("free, status", [(5 * T.GIB, FAIL), (30 * T.GIB, WARN), (200 * T.GIB, PASS)])
def test_disk_thresholds_on_a_gpu_node_measure_the_nearest_existing_folder(monkeypatch, tmp_path, free, status):
    seen = []
    monkeypatch.setattr(access, "free_bytes", lambda path: seen.append(path) or free)
    res = access.disk(make_ctx("cuda", (H200,), env={"HF_HOME": str(tmp_path / "hf" / "cache")}))
    assert res.status == status and seen == [tmp_path]
    assert "not created yet" in res.detail


@pytest.mark.parametrize("free, status, says", [
    (512 * 1024**2, FAIL, "below 1.0 GiB"),
    (15 * T.GIB, WARN, "enough for the CPU demo"),  # what a CI machine had: it failed the 7B threshold before
    (30 * T.GIB, WARN, "below 50.0 GiB"),
    (200 * T.GIB, PASS, ""),
])
def test_disk_on_a_cpu_machine_asks_only_what_the_cpu_demo_needs(monkeypatch, tmp_path, free, status, says):
    monkeypatch.setattr(access, "free_bytes", lambda path: free)
    res = access.disk(make_ctx(env={"HF_HOME": str(tmp_path)}))
    assert res.status == status and says in res.detail


def test_disk_keeps_the_7b_threshold_where_a_gpu_is_expected(monkeypatch, tmp_path, fake_dev):
    monkeypatch.setattr(access, "free_bytes", lambda path: 15 * T.GIB)
    assert access.disk(make_ctx(env={"HF_HOME": str(tmp_path)}, require_gpu=True)).status == FAIL
    (fake_dev / "nvidiactl").write_text("")  # a GPU node whose container was started without the GPUs
    res = access.disk(make_ctx(env={"HF_HOME": str(tmp_path)}))
    assert res.status == FAIL and "below 20.0 GiB" in res.detail


def test_cache_dir_precedence(tmp_path):
    assert access.cache_dir({"HF_HOME": "/hf", "XDG_CACHE_HOME": "/x"}) == access.Path("/hf")
    assert access.cache_dir({"XDG_CACHE_HOME": "/x"}) == access.Path("/x/huggingface")
    assert access.cache_dir({"HOME": "/home/u"}) == access.Path("/home/u/.cache/huggingface")
