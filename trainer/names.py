"""The rule for model names in the model repository, in one place.

The trainer checks a ``--model-name`` when the run is configured (so a bad name is refused
before any training) and again when it exports; both use :func:`check_model_name`. The rule
is the one the server lists models by (``engine/repository.py``: a letter or digit, then
letters, digits, ``_``, ``-`` and ``.``): a name outside it would be exported into a
directory that ``conveyor serve`` never serves, or, with ``/`` or a leading ``.``, outside
``REPO/NAME`` altogether.
"""

from __future__ import annotations

import re

from conveyor.trainer.errors import ExportError

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# A directory name on common filesystems is at most 255 bytes (all ASCII here).
MAX_MODEL_NAME = 255


def check_model_name(name: str, what: str = "model name") -> None:
    """Raise :class:`ExportError` unless ``name`` is a valid model name; ``what`` names it.

    An empty name is an error, not a default: the README documents no default model name,
    and an export quietly named something else is one nobody looks for.
    """
    if not name:
        raise ExportError(f"{what} is empty: give the name the model is served under")
    if not MODEL_NAME.fullmatch(name) or len(name) > MAX_MODEL_NAME:
        raise ExportError(
            f"{what} {name!r} is not a valid model name: use letters, digits, '_', '-' and "
            f"'.', starting with a letter or digit, at most {MAX_MODEL_NAME} characters"
        )
