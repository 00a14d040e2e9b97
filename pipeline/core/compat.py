"""Every difference between the images' stack (torch 2.3, transformers 4.57) and today's releases, in one place.

The images run transformers 4.57 and torch 2.3 (stack.env); dev machines and the CI's first venv run current
releases (transformers 5.x). Each shim below names the version it exists for: when the images move past that
version, delete the shim and call the current API directly at its (few) call sites.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLAIN_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def plain_tokenizer_class(folder: Path) -> None:
    """Rewrite ``tokenizer_config.json`` in ``folder`` to name the plain fast tokenizer class.

    For transformers 4.57: 5.x records ``"tokenizer_class": "TokenizersBackend"``, which 4.57's AutoTokenizer cannot
    load; ``PreTrainedTokenizerFast`` reads the same ``tokenizer.json`` in both. Delete when the images run 5.x.
    """
    path = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = PLAIN_TOKENIZER_CLASS
    path.write_text(json.dumps(cfg, indent=2))


def config_readable_by_4_57(path: Path) -> None:
    """Write the legacy spellings beside the new ones in a saved ``config.json``.

    For transformers 4.57: 5.x writes ``rope_parameters`` and ``dtype``; 4.57 reads ``rope_theta`` and
    ``torch_dtype`` and would silently fall back to its defaults (rope_theta 10000 instead of SmolLM2's 100000:
    wrong positions). 5.x accepts the legacy keys, so one checkpoint stays valid for both. Delete with 4.57.
    """
    cfg = json.loads(path.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
    if "dtype" in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def auto_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer.from_pretrained(path)``, falling back to ``PreTrainedTokenizerFast`` on the same folder.

    For transformers 4.57 reading a tokenizer saved by 5.x (it names ``TokenizersBackend``, which 4.57's
    AutoTokenizer does not know); ``PreTrainedTokenizerFast`` reads the same ``tokenizer.json`` in both versions.
    Delete the fallback when the images run 5.x.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, AttributeError, KeyError, OSError) as exc:
        if not (Path(path) / "tokenizer.json").is_file():
            raise
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        if tokenizer is None:  # pragma: no cover - defensive
            raise exc
        return tokenizer


def checkpointing_active(model: Any) -> bool:
    """Whether gradient (activation) checkpointing is on for a transformers model.

    transformers 5.x renamed ``is_gradient_checkpointing`` to ``is_activation_checkpointing`` (the old name warns
    and goes in v6); 4.57 has only the old one. Delete the old name with 4.57.
    """
    # A peft model forwards attributes per instance, so its class has neither name: ask the base model's class.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") else (
        "is_gradient_checkpointing")
    return bool(getattr(base, name, False))


def checkpointing_enable(model: Any, checkpoint_kwargs: dict[str, Any]) -> None:
    """Switch activation checkpointing on for a transformers base model, passing ``checkpoint_kwargs`` to
    ``torch.utils.checkpoint``.

    transformers 5.x renamed ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=)`` to
    ``activation_checkpointing_enable(activation_checkpointing_kwargs=)`` (the old name warns and goes in v6); 4.57
    has only the old one. Delete the old name with 4.57.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)


def returned_cache(out: Any) -> tuple[str, Any] | None:
    """(name, cache) of the KV cache a forward pass returned, under the name this transformers version uses.

    transformers 5.x renamed ``past_key_values`` to ``cache`` (input and output; the old names warn and go away in
    5.40); 4.57 knows only ``past_key_values``. The cache goes back in under the name it came out with. Delete the
    old name once the images run 5.x.
    """
    for name in ("cache", "past_key_values"):
        value = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if value is not None:
            return name, value
    return None


def let_collective_threads_finish() -> None:
    """Before ``destroy_process_group``: let the backend's worker threads finish with the GIL free.

    A Gloo worker thread drops a finished collective's tensors (``all_gather_object``'s, for example) a moment after
    the caller saw the collective complete, and dropping their Python objects needs the GIL. If the main thread
    does not give it up in that moment, two things go wrong, both seen on the CPU with two ranks after a sharded
    evaluation, the result already written:

    * torch < 2.8 (the images' 2.3): the process group's destructor joins the worker threads while holding the
      GIL: both wait forever (pytorch/pytorch#154976 fixed the destructor in 2.8);
    * torch 2.13 with Python 3.11: the process exits first, and a worker asking for the GIL during interpreter
      shutdown is ended by CPython with ``pthread_exit`` inside a ``noexcept`` C++ frame: the rank aborts
      ("terminate called without an active exception", SIGABRT; a core dump showed the worker in
      ``THPVariable_dealloc`` -> ``gil_scoped_acquire`` -> ``PyThread_exit_thread``): 3 of 40 runs of the
      two-rank sharded-evaluation test (tests/pipeline/test_ddp.py) without the pause, 0 of 40 with it.

    Every collective the kit makes is synchronous, so those frees are already due; sleeping releases the GIL long
    enough for them. Costs half a second per distributed run. Delete when every stack runs torch >= 2.8 and
    Python >= 3.14 (CPython gh-87135: a thread asking for the GIL during shutdown then blocks until the process
    exits instead of being unwound); the images run torch 2.3 on Python 3.10.
    """
    import time

    time.sleep(0.5)
