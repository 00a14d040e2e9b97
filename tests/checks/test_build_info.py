import json

import pytest

from checks.build_info import BuildInfoError, build_info_path, load_build_info, normalize_arch

ROCM = {
    "schema": 1, "vendor": "rocm", "torch_version": "2.3.1+rocm6.0", "gpu_archs": ["gfx90a", "gfx942"],
    "rocm_version": "6.1.2", "hip_version": "6.0.32830", "flash_attn_version": "2.6.3",
    "bitsandbytes_version": "0.49.2", "base_image": "rocm/dev-ubuntu-22.04@sha256:abc",
}


def write(tmp_path, payload):
    path = tmp_path / "build.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_valid_file_parses_and_keeps_unknown_keys(tmp_path):
    info = load_build_info(write(tmp_path, ROCM))
    assert info.vendor == "rocm" and info.gpu_archs == ("gfx90a", "gfx942")
    assert info.rocm_version == "6.1.2" and info.cuda_version is None
    assert info.extra == {"base_image": "rocm/dev-ubuntu-22.04@sha256:abc"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"vendor": "intel"}, "'vendor' must be 'rocm' or 'cuda'"),
        ({"gpu_archs": []}, "'gpu_archs' must be a non-empty list"),
        ({"gpu_archs": "gfx90a"}, "'gpu_archs' must be a list"),
        ({"rocm_version": None}, "needs key 'rocm_version'"),
        ({"schema": 2}, "schema 1"),
        ({"flash_attn_version": 2.6}, "'flash_attn_version' must be a str or null"),
    ],
)
def test_invalid_values_name_file_and_key(tmp_path, change, message):
    path = write(tmp_path, {**ROCM, **change})
    with pytest.raises(BuildInfoError, match=message) as err:
        load_build_info(path)
    assert str(path) in str(err.value)


def test_missing_key_and_bad_json_are_named(tmp_path):
    payload = dict(ROCM)
    del payload["torch_version"]
    with pytest.raises(BuildInfoError, match="missing required key 'torch_version'"):
        load_build_info(write(tmp_path, payload))
    with pytest.raises(BuildInfoError, match="not valid JSON at line 1"):
        load_build_info(write(tmp_path, "{vendor: rocm"))


def test_path_from_env_is_explicit():
    assert build_info_path({"KIT_BUILD_INFO": "/x/b.json"}) == (__import__("pathlib").Path("/x/b.json"), True)
    path, named = build_info_path({})
    assert str(path) == "/etc/clinical-finetune-kit/build.json" and named is False


@pytest.mark.parametrize(
    "raw, norm",
    [("gfx90a:sramecc+:xnack-", "gfx90a"), ("9.0", "sm_90"), ("9.0+PTX", "sm_90"), ("sm_80", "sm_80"),
     ("compute_90", "sm_90"), ("8.6", "sm_86"), ("GFX942", "gfx942")],
)
def test_normalize_arch(raw, norm):
    assert normalize_arch(raw) == norm
