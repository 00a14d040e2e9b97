"""One base class for every mistake the user can fix in their own input or machine.

``python -m pipeline`` turns a ``UserError`` into a short message and exit status 2, and lets everything else
raise with a traceback. The decision is made by exception type, never by matching words in a message: a
``FileNotFoundError`` from our own code is a bug worth a traceback, and a user's ``train.steps=0`` is not.

The concrete classes keep their old built-in bases (``RecipeError`` is still a ``ValueError``, a missing model
folder still a ``FileNotFoundError``) so callers that caught those keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave us (recipe, data, flags, output folder, machine) cannot work; the message says why
    and what to change."""


class RecipeError(UserError, ValueError):
    """A recipe file or override is invalid; the message names the file and key."""


class UnsupportedError(UserError, RuntimeError):
    """The recipe asks for something this machine cannot do (and the recipe says not to fall back)."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """The model or adapter the user named is not there (or not a checkpoint)."""


class ExampleError(UserError, ValueError):
    """One data row cannot be used with these settings (e.g. its answer alone exceeds data.max_length)."""


class OutputError(UserError, OSError):
    """The output folder cannot take this run: not a folder, not writable, not enough space, or in use."""


class ResumeError(UserError, ValueError):
    """``--resume`` would continue a different run than the one the checkpoint holds."""


class AdapterGradientError(UnsupportedError):
    """LoRA adapters received no gradient: training would change nothing."""
