import sys
import types

import pytest

from checks import pipeline_check as P
from checks.core import FAIL, PASS

from .conftest import H200, make_ctx


@pytest.fixture
def fake_pipeline(monkeypatch, tmp_path):
    """Replace the pipeline's heavy entry points; records the recipe the check built."""
    seen = {}
    report = {"quantization_path": "nf4", "final_loss": 5.9, "steps": 2}

    def build_tiny_model(out_dir, **kw):
        out_dir.mkdir(parents=True)
        return out_dir

    def write_demo_data(out_dir, seed=0):
        out_dir.mkdir(parents=True)
        return out_dir / "train.jsonl", out_dir / "test.jsonl"

    def finetune(recipe):
        seen["recipe"] = recipe
        if isinstance(report.get("raise"), Exception):
            raise report["raise"]
        return dict(report)

    for name, attrs in {"pipeline.model.tiny": {"build_tiny_model": build_tiny_model},
                        "pipeline.data.demo": {"write_demo_data": write_demo_data},
                        "pipeline.finetune": {"finetune": finetune}}.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    return seen, report


def test_gpu_run_must_take_the_nf4_path(fake_pipeline):
    seen, report = fake_pipeline
    gpu = make_ctx("cuda", (H200,), ("sm_90",), "12.1")
    res = P.qlora(gpu)
    assert res.status == PASS and res.value == "nf4, 2 steps, loss 5.900"
    recipe = seen["recipe"]
    assert recipe.quantization.mode == "nf4" and recipe.quantization.on_unsupported == "error"
    assert recipe.train.device == "cuda" and recipe.train.steps == 2
    report["quantization_path"] = "bf16-fallback"
    res = P.qlora(gpu)
    assert res.status == FAIL and "did not train on the GPU" in res.detail


def test_cpu_run_accepts_a_fallback_and_says_so(fake_pipeline):
    seen, report = fake_pipeline
    report["quantization_path"] = "fp32-fallback"
    res = P.qlora(make_ctx(torch_version="2.13.0+cpu"))
    assert res.status == PASS and "CPU, quantization path fp32-fallback" in res.detail
    assert seen["recipe"].train.device == "cpu" and seen["recipe"].quantization.on_unsupported == "fallback"


@pytest.mark.parametrize("change, message",
                         [({"steps": 1}, "ran 1 steps"), ({"final_loss": float("nan")}, "not a finite")])
def test_bad_reports_fail(fake_pipeline, change, message):
    _, report = fake_pipeline
    report.update(change)
    res = P.qlora(make_ctx())
    assert res.status == FAIL and message in res.detail and "python -m pipeline" in res.hint


def test_a_crashing_finetune_fails_with_its_message(fake_pipeline):
    _, report = fake_pipeline
    report["raise"] = RuntimeError("CUDA error: no kernel image is available for execution on the device")
    res = P.qlora(make_ctx("cuda", (H200,), ("sm_90",), "12.1"))
    assert res.status == FAIL and "no kernel image" in res.detail and res.value == "RuntimeError"


def test_missing_pipeline_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "pipeline.finetune", None)  # import raises ImportError
    res = P.qlora(make_ctx())
    assert res.status == FAIL and res.value == "pipeline not importable"


def test_overrides_form_a_valid_recipe(tmp_path):
    from pipeline.core.config import load_recipe

    for on_gpu in (True, False):
        recipe = load_recipe(None, P.recipe_overrides(tmp_path / "m", tmp_path / "t.jsonl", tmp_path / "r", on_gpu))
        assert recipe.model.name_or_path == str(tmp_path / "m") and recipe.data.train == str(tmp_path / "t.jsonl")
        assert recipe.train.checkpoint_every == 0 and recipe.quantization.mode == "nf4"


def test_real_two_step_finetune_on_this_cpu():
    """The real pipeline, end to end (a few seconds on 2 cores)."""
    res = P.qlora(make_ctx(torch_version="2.13.0+cpu"))
    assert res.status == PASS, res.detail
    assert res.data["steps"] == 2 and res.data["quantization_path"]


def test_the_finetunes_output_stays_off_the_screen_unless_it_fails(fake_pipeline, monkeypatch, capfd):
    """The pipeline's warnings about the check's own generated data and library noise are not about the node:
    a passing check prints nothing; a failing one shows the last lines and names the full log."""
    import os as _os

    _, report = fake_pipeline
    # The fixture's fake of the module that holds finetune (its name follows the pipeline's layout).
    module = next(m for m in sys.modules.values() if isinstance(m, types.SimpleNamespace) and hasattr(m, "finetune"))
    real = module.finetune

    def noisy(recipe):
        for i in range(40):
            print(f"warning: train.jsonl:{i}: repeats the question", file=sys.stderr)
        _os.write(1, b"Loading weights: 100%\r\n")  # C-level and unbuffered writes too
        return real(recipe)

    monkeypatch.setattr(module, "finetune", noisy)
    res = P.qlora(make_ctx())
    out, err = capfd.readouterr()
    assert res.status == PASS and out == "" and err == "" and res.data["output_lines"] == 41
    report["steps"] = 1
    res = P.qlora(make_ctx())
    out, err = capfd.readouterr()
    log = res.data["output_log"]
    assert res.status == FAIL and f"full output: {log}" in res.detail
    assert "train.jsonl:39: repeats" in err and "train.jsonl:10:" not in err and log in err
    assert "train.jsonl:0: repeats" in open(log).read()
    _os.unlink(log)
