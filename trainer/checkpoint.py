"""Atomic, checksummed checkpoints: a kill at any instant leaves the previous good one usable.

File ``ckpt-<step>.pt`` in the run directory, ``step`` = optimizer steps done (10 digits)::

    b"CONVEYOR-CKPT-v1"   16 bytes, magic and format version
    sha256(payload)       32 bytes
    len(payload)          8 bytes, little-endian
    payload               torch.save of the state dict

Writing: serialise to memory, write to a hidden temporary file in the same directory, fsync it,
rename it over the final name (atomic on POSIX), fsync the directory so the rename itself
survives a power cut, then delete all but the newest ``keep``. Reading: newest first; a file
whose magic, length or checksum is wrong (truncated by a full disk, a half-copied directory) is
logged and skipped, so the previous good one is used.

The payload is a pickle (it holds RNG states as Python objects): load checkpoints only from run
directories you wrote. The checksum catches corruption, not tampering.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from conveyor.trainer.errors import CheckpointError

log = logging.getLogger("conveyor.trainer")
MAGIC = b"CONVEYOR-CKPT-v1"
_HEADER = len(MAGIC) + 32 + 8
_NAME = re.compile(r"^ckpt-(\d{10})\.pt$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:010d}.pt"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically; keep the newest ``keep`` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    final = checkpoint_path(directory, step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(MAGIC)
        fh.write(hashlib.sha256(payload).digest())
        fh.write(len(payload).to_bytes(8, "little"))
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, newest (highest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint; :class:`CheckpointError` if it is truncated or corrupt."""
    data = Path(path).read_bytes()
    if len(data) < _HEADER or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path}: not a conveyor checkpoint (bad header)")
    digest = data[len(MAGIC) : len(MAGIC) + 32]
    size = int.from_bytes(data[len(MAGIC) + 32 : _HEADER], "little")
    payload = data[_HEADER:]
    if len(payload) != size:
        raise CheckpointError(f"{path}: truncated ({len(payload)} of {size} payload bytes)")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (corrupt)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def load_latest(directory: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that reads back intact, or None when there is none at all.

    Raises :class:`CheckpointError` when checkpoints exist but every one is corrupt.
    """
    paths = list_checkpoints(directory)
    for path in paths:
        try:
            return path, read_checkpoint(path)
        except (CheckpointError, OSError) as exc:
            log.warning("skipping checkpoint %s: %s", path.name, exc)
    if paths:
        raise CheckpointError(f"{directory}: all {len(paths)} checkpoints are corrupt")
    return None
