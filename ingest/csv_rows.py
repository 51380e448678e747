"""A ragged CSV row whose bytes are not UTF-8: one error naming its line.

The reader quarantines a row with the wrong number of fields through pyarrow's
``invalid_row_handler``; pyarrow decodes the row's bytes as UTF-8 before it calls the
handler. Bytes that are not UTF-8 (a Latin-1 file) make that decoding raise inside
pyarrow's callback, where Python can only report it as an "unraisable" exception (a
traceback on stderr), and the parse then fails with "Expected N columns, got M". The
row cannot be quarantined, so the file's error names the line and says what to do;
:func:`install` keeps the stray traceback off stderr.

The hook chains to the previous one for every other unraisable exception. pyarrow may
call the handler on one of its own threads, so a report is matched to a failed read by
the row's text, which pyarrow's error message ends with (its bytes decoded with
replacement characters; a long row cut to its start and " ...").
"""

from __future__ import annotations

import re
import sys
import threading
from collections import deque
from typing import Any

_lock = threading.Lock()
_installed = False
# The rows reported and not yet matched to a failed read, as pyarrow's message shows them.
_rows: deque[str] = deque(maxlen=64)
_ROW = re.compile(r"Row #(\d+)")
_SHOWN = re.compile(r"columns, got \d+: (.*)$", re.DOTALL)


def _from_invalid_row_handler(unraisable: Any) -> bool:
    if not isinstance(unraisable.exc_value, UnicodeDecodeError):
        return False
    tb = unraisable.exc_traceback
    while tb is not None:
        # Cython names its frames by their qualified name: pyarrow._csv._handle_invalid_row.
        if tb.tb_frame.f_code.co_name.endswith("_handle_invalid_row"):
            return True
        tb = tb.tb_next
    return False


def install() -> None:
    """Take pyarrow's reports of an invalid CSV row it could not decode (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = sys.unraisablehook

        def hook(unraisable: Any) -> None:
            if _from_invalid_row_handler(unraisable):
                row = unraisable.exc_value.object
                if isinstance(row, (bytes, bytearray)):
                    _rows.append(bytes(row).decode("utf-8", "replace"))
                return
            previous(unraisable)

        sys.unraisablehook = hook
        _installed = True


def undecodable_row(exc: Exception) -> str | None:
    """The error for a CSV read that failed on a ragged row pyarrow could not decode (None
    for any other failure); the report is consumed."""
    message = str(exc).rstrip()
    shown = _SHOWN.search(message)
    if shown is None:
        return None
    text = shown.group(1)

    def matches(row: str) -> bool:
        if text.endswith(" ..."):  # pyarrow cuts a long row
            return row.startswith(text[:-4])
        return row.rstrip() == text

    with _lock:
        row = next((r for r in _rows if matches(r)), None)
        if row is None:
            return None
        _rows.remove(row)
    match = _ROW.search(message)
    line = int(match.group(1)) if match else None
    where = f"line {line} (row {line - 2})" if line is not None and line >= 2 else "a row"
    return (
        f"{where} has the wrong number of fields and bytes that are not UTF-8 text, so it "
        "cannot be quarantined; re-encode the file as UTF-8"
    )
