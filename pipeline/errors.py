"""Errors that mean "this machine cannot do what the recipe asks": the CLI prints them without a traceback."""

from __future__ import annotations


class UnsupportedError(RuntimeError):
    """The recipe asks for something this machine cannot do (and the recipe says not to fall back)."""


class AdapterGradientError(UnsupportedError):
    """LoRA adapters received no gradient: training would change nothing."""
