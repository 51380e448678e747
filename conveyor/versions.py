"""Model version numbers, shared by the stages that must agree on them.

The trainer numbers the versions it exports (``conveyor.trainer.export``) and the server
serves version directories and names versions in requests (``conveyor.engine``): a
version one writes must be one the other serves. Versions are Triton's int64.
"""

from __future__ import annotations

# The largest version number. A longer string is no version: int() of more than 4300
# digits raises ValueError, and any length costs time.
MAX_VERSION = 2**63 - 1
_MAX_VERSION_DIGITS = len(str(MAX_VERSION))


def version_number(text: str) -> int | None:
    """``text`` as a whole number when it is ASCII digits only and at most ``MAX_VERSION``,
    else None: ``int()`` would also take ' 2', '+2', '1_0' (= 10) and non-ASCII digits,
    and raises ValueError beyond 4300 digits."""
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_VERSION_DIGITS:
        return None
    number = int(text)
    return number if number <= MAX_VERSION else None


def version_directory(name: str) -> int | None:
    """The version a directory named ``name`` holds, else None: a version number without
    leading zeros, one spelling per version, so that ``01/`` never stands beside ``1/``."""
    return None if name.startswith("0") else version_number(name)
