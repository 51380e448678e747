"""The file formats conveyor.ingest reads, by the names ``format=`` and ``--format`` take,
and the ``--format`` flag of the commands that read a source (``conveyor ingest ...``,
``conveyor train``).

No pyarrow here: the command-line tools use it when they build their parsers.
"""

from __future__ import annotations

import argparse

FORMATS = ("parquet", "csv", "json", "ipc")
# How a command-line user gives a format that the file names do not tell.
FORMAT_FLAG_HINT = f"pass --format ({', '.join(FORMATS[:-1])} or {FORMATS[-1]})"


def add_format_flag(parser: argparse.ArgumentParser) -> None:
    """``--format`` (default None: from the file extensions)."""
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="default: from the file extensions"
    )
