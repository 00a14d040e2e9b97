"""Model resolution, the quantization and attention decisions, and the adapter-gradient guard."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.finetune import finetune
from pipeline.model import load as model_mod
from pipeline.model.load import (
    AdapterGradientError,
    UnsupportedError,
    adapters_without_gradient,
    choose_attention,
    load_for_training,
    load_tokenizer,
    lora_parameters,
    parse_random_spec,
    resolve_model,
)
from pipeline.train import guard as guard_mod
from pipeline.train.loss import mean_answer_loss

from .recipe_helpers import tiny_recipe

CPU = torch.device("cpu")


def _batch(recipe, tokenizer):
    from pipeline.data.batching import collate
    from pipeline.data.prompts import encode_example
    from pipeline.data.questions import load_questions

    qs = load_questions(recipe.data.train)[:2]
    return collate([encode_example(tokenizer, q, "text", 128) for q in qs], tokenizer.pad_token_id)


# -- resolution -------------------------------------------------------------------------------------------------


def test_local_folder_is_used_as_is(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_hub_ids_pass_through():
    assert resolve_model("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"


def test_random_spec_parsing():
    shape = parse_random_spec("random:llama2-7b")
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"],
            shape["intermediate_size"], shape["vocab_size"]) == (4096, 32, 32, 11008, 32000)
    small = parse_random_spec("random:llama2-7b:hidden_size=64,num_hidden_layers=2,num_attention_heads=4")
    assert small["hidden_size"] == 64 and small["intermediate_size"] == 11008
    with pytest.raises(ValueError, match="unknown random preset"):
        parse_random_spec("random:gpt5")
    with pytest.raises(ValueError, match="override 'layers=2'"):
        parse_random_spec("random:llama2-7b:layers=2")


def test_tokenizer_gets_a_pad_token(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, copy)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = copy / name
        if path.is_file():
            cfg = json.loads(path.read_text())
            cfg.pop("pad_token", None)
            path.write_text(json.dumps(cfg))
    tok = load_tokenizer(str(copy))
    assert tok.pad_token is not None and tok.pad_token_id == tok.eos_token_id


def test_tokenizer_with_unknown_class_falls_back_to_fast(tiny_model_dir, tmp_path):
    """What transformers 4.57 sees in a 5.x-saved tokenizer: a class name it does not know."""
    import shutil

    copy = tmp_path / "oddclass"
    shutil.copytree(tiny_model_dir, copy)
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "NoSuchTokenizerClass"
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(str(copy))
    assert tok("Question: lisinopril")["input_ids"]


# -- decisions ----------------------------------------------------------------------------------------------------


def test_attention_on_cpu_is_sdpa_with_reason():
    name, reason = choose_attention("auto", CPU, torch.float32)
    assert name == "sdpa" and reason.startswith("auto:")
    with pytest.raises(UnsupportedError, match="flash_attention_2"):
        choose_attention("flash_attention_2", CPU, torch.bfloat16)


def test_nf4_on_cpu_refuses_when_recipe_says_error(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=["quantization.mode=nf4", "quantization.on_unsupported=error"])
    with pytest.raises(UnsupportedError, match="4-bit cannot train here.*CPU"):
        load_for_training(recipe, CPU)


def test_nf4_on_cpu_falls_back_and_says_why(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=["quantization.mode=nf4"])
    model, _, info = load_for_training(recipe, CPU)
    assert info.quantization_path == "fp32-fallback"
    assert "CPU" in info.quantization_reason and "gemv_4bit" in info.quantization_reason
    assert info.trainable_params > 0 and not any("Linear4bit" in type(m).__name__ for m in model.modules())


# -- the adapter-gradient guard -----------------------------------------------------------------------------------


def test_guard_passes_and_leaves_the_model_untouched(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, tmp_path)
    model, tok, _ = load_for_training(recipe, CPU)
    before = {n: p.detach().clone() for n, p in lora_parameters(model)}
    rng = torch.get_rng_state()
    assert adapters_without_gradient(model, mean_answer_loss, _batch(recipe, tok)) == []
    for n, p in lora_parameters(model):
        assert torch.equal(p, before[n]) and p.grad is None, n
    assert torch.equal(torch.get_rng_state(), rng)  # dropout masks of the real run are unchanged


def test_guard_names_adapters_cut_off_from_the_loss(tiny_model_dir, tmp_path):
    """Layer 0's output detached (as a 4-bit layer without a backward kernel would): its adapters get nothing."""
    recipe = tiny_recipe(tiny_model_dir, tmp_path)
    model, tok, _ = load_for_training(recipe, CPU)
    layer0 = model.get_base_model().get_decoder().layers[0]
    layer0.register_forward_hook(lambda m, i, out: tuple(o.detach() if torch.is_tensor(o) else o for o in out)
                                 if isinstance(out, tuple) else out.detach())
    missing = adapters_without_gradient(model, mean_answer_loss, _batch(recipe, tok))
    assert missing and all(".layers.0." in n for n in missing)
    assert len(missing) == 14  # A and B of all 7 target modules of layer 0


def _broken_guard(monkeypatch):
    """Make the guard see a dead adapter whenever the model has 4-bit layers (the SmolLM2-on-CPU failure)."""
    real = model_mod.adapters_without_gradient

    def fake(model, loss_fn, batch):
        missing = real(model, loss_fn, batch)
        if any("Linear4bit" in type(m).__name__ for m in model.modules()):
            return missing + ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
        return missing

    monkeypatch.setattr(guard_mod, "adapters_without_gradient", fake)


def test_dead_adapters_on_4bit_fall_back_and_report_why(tiny_model_dir, tmp_path, monkeypatch):
    _broken_guard(monkeypatch)
    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=["quantization.mode=nf4", "quantization.allow_cpu=true",
                                                          "train.steps=3"])
    report = finetune(recipe)
    assert report["quantization_path"] == "fp32-fallback"
    assert "adapter-gradient guard" in report["model"]["quantization_reason"]
    assert "Linear4bit" not in json.dumps(report)


def test_dead_adapters_refuse_when_recipe_says_error(tiny_model_dir, tmp_path, monkeypatch):
    _broken_guard(monkeypatch)
    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=["quantization.mode=nf4", "quantization.allow_cpu=true",
                                                          "quantization.on_unsupported=error"])
    with pytest.raises(AdapterGradientError, match="no gradient on the nf4 path"):
        finetune(recipe)
    assert not (tmp_path / "run" / "adapter").exists()


def test_cpu_4bit_path_trains_or_falls_back_honestly(tiny_model_dir, tmp_path):
    """bitsandbytes' real CPU 4-bit layers with the tiny model: whatever happens, the report must match it.

    Measured with bitsandbytes 0.50.2 here: the tiny model's adapters do get gradient on CPU 4-bit layers, so the
    path stays nf4 and the loss falls; if a bitsandbytes version breaks that, the guard must fall back instead.
    """
    pytest.importorskip("bitsandbytes")
    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=["quantization.mode=nf4", "quantization.allow_cpu=true",
                                                          "quantization.compute_dtype=float32", "train.steps=15"])
    report = finetune(recipe)
    losses = report["training"]["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses
    if report["quantization_path"] == "nf4":
        assert report["model"]["base_dtype"] == "nf4"
        assert "all 30 LoRA matrices received a non-zero gradient" in report["training"]["adapter_gradient_check"]
    else:
        assert report["quantization_path"] == "fp32-fallback"
        assert "adapter-gradient guard" in report["model"]["quantization_reason"]


# -- GPU-only paths (run on the H200 by the lead) -----------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU (4-bit NF4 path)")


@pytest.mark.gpu
@needs_gpu
def test_nf4_on_gpu_trains_every_adapter(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=[
        "quantization.mode=nf4", "quantization.on_unsupported=error", "train.device=cuda", "train.precision=bf16",
        "train.steps=15", "model.gradient_checkpointing=true", "train.optimizer=paged_adamw_8bit"])
    report = finetune(recipe)
    assert report["quantization_path"] == "nf4" and report["model"]["base_dtype"] == "nf4"
    assert report["environment"]["device"]["gpu_name"]
    assert report["training"]["peak_memory"]["peak_gpu_memory_gib"] > 0
    losses = report["training"]["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention 2 needs a GPU")
def test_flash_attention_chosen_when_available():
    pytest.importorskip("flash_attn", reason="flash_attn is not installed in this environment")
    name, _ = choose_attention("auto", torch.device("cuda", 0), torch.bfloat16)
    assert name == "flash_attention_2"


def test_checkpointing_state_of_a_peft_model_is_read_without_a_deprecation_warning(tiny_model_dir):
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.core.compat import checkpointing_active
    from pipeline.model.load import enable_checkpointing

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5 warns on the old name
        assert checkpointing_active(model) is False
        enable_checkpointing(model)
        assert checkpointing_active(model) is True
