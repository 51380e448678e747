"""Row counts per piece, which fix a loader's plan, computed once and shared.

A count depends on the piece (file, row group), the file's contents, the filter and the split.
Parquet and IPC know their rows from metadata, and a split over them costs only the vectorised
hash of the row indices; text formats and filters need a counting pass. :func:`piece_counts`
caches every count under a key of the file's path, size and modification time (ns), the row
group, the filter's text and the split, in memory for the process (the train and validation
loaders of a rank share them) and, given a :class:`CountCache` file, on disk, so that the ranks
of a job and a resumed job reuse the counts one process computed. A file whose size or mtime
changed gets a new key and is counted again; a file the filesystem reports no mtime for is
counted every time. Should a file change undetected, the loader still stops with a
:class:`~conveyor.ingest.errors.SourceError` when a piece yields another number of rows than
its count.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.fs as pafs

from conveyor.ingest.source import Piece, Source
from conveyor.ingest.split import SplitConfig

_MEMORY: dict[str, int] = {}
_MEMORY_LIMIT = 1_000_000  # entries; cleared past it (a count is cheap to redo)
_LOCK = threading.Lock()


class CountCache:
    """A JSON file of ``{key: rows}``, read at construction and rewritten atomically by
    :meth:`save` (concurrent writers each leave a whole file; a lost entry is recounted)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, int] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and data.get("version") == 1:
                self.entries = {str(k): int(v) for k, v in data["counts"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing or unreadable: start empty, it is only a cache

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".counts-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": 1, "counts": self.entries}, fh)
        os.replace(tmp, self.path)
        self.dirty = False


def _file_keys(source: Source) -> dict[str, str | None]:
    """``path -> "fs|path|size|mtime_ns"``, or None where the mtime is unknown."""
    infos = source.filesystem.get_file_info(source.files)
    out: dict[str, str | None] = {}
    for info in infos:
        if info.type != pafs.FileType.File or info.mtime_ns is None:
            out[info.path] = None
        else:
            fs = source.filesystem.type_name
            out[info.path] = f"{fs}|{info.path}|{info.size}|{info.mtime_ns}"
    return out


def count_key(
    file_key: str, piece: Piece, filter: ds.Expression | None, split: SplitConfig | None
) -> str:
    split_key = "-" if split is None else f"{split.key()}/{split.part}"
    return f"{file_key}|rg={piece.row_group}|filter={filter}|split={split_key}"


def piece_counts(
    source: Source,
    pieces: list[Piece],
    filter: ds.Expression | None = None,
    split: SplitConfig | None = None,
    cache: CountCache | None = None,
) -> list[int]:
    """Rows each piece yields under ``filter`` and ``split`` (see the module docstring)."""
    if filter is None and split is None and all(p.num_rows is not None for p in pieces):
        return [int(p.num_rows) for p in pieces]  # metadata: nothing to cache
    files = _file_keys(source)
    counts = []
    for piece in pieces:
        file_key = files.get(piece.path)
        key = count_key(file_key, piece, filter, split) if file_key is not None else None
        n = None
        if key is not None:
            with _LOCK:
                n = _MEMORY.get(key)
            if n is None and cache is not None:
                n = cache.entries.get(key)
        if n is None:
            n = source.count_rows(piece, filter, split)
        if key is not None:
            with _LOCK:
                if len(_MEMORY) >= _MEMORY_LIMIT:
                    _MEMORY.clear()
                _MEMORY[key] = n
            if cache is not None and cache.entries.get(key) != n:
                cache.entries[key] = n
                cache.dirty = True
        counts.append(n)
    if cache is not None:
        cache.save()
    return counts


def clear_memory() -> None:
    """Forget the in-process counts (tests; a long-lived process re-reading changed data)."""
    with _LOCK:
        _MEMORY.clear()
