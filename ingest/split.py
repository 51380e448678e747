"""Reader-level hold-out split: each row's part from a seeded hash of where it lives.

A row's identity is ``(file path relative to the source root, row index within the file)``
(0-based, header excluded; for Parquet, row groups counted in file order). Its 64-bit hash,
mixed with the seed, is turned into a number ``u`` in ``[0, 1)``; the row is a validation row
when ``u < fraction``, a training row otherwise. So the parts are disjoint and together hold
every row, and a row's part does not depend on world size, rank, shuffling, batch size, resume,
filters or the order of the reads: only on the file's path under the root, the row's place in
it, the fraction and the seed. Rewriting or renaming a file moves its rows between parts; a
split on a key column (see :mod:`conveyor.trainer.split`) survives that, this one needs no key.

Computed vectorised with numpy (splitmix64 over uint64 arrays, no per-row Python); the path's
hash is BLAKE2b, so it is the same on every machine and Python (``hash()`` of a string is
salted per process).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

PARTS = ("train", "val")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class SplitConfig:
    """Which part of a seeded hold-out split a reader yields.

    Attributes:
        fraction: share of rows in the ``"val"`` part, in ``(0, 1)``.
        seed: salts the hash (default 0); another seed is another, independent split.
        part: ``"train"`` (the ``1 - fraction`` complement) or ``"val"``.
    """

    fraction: float
    seed: int = 0
    part: str = "train"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"split fraction must be in (0, 1), got {self.fraction}")
        if self.part not in PARTS:
            raise ValueError(f"split part must be one of {PARTS}, got {self.part!r}")

    def key(self) -> str:
        """What identifies the split in caches and in a loader's state_dict."""
        return f"{self.fraction!r}/{self.seed}"

    def keep(self, rel_path: str, rows: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``rows`` (indices within the file at ``rel_path``) are in
        this part."""
        val = is_val(rel_path, rows, self.fraction, self.seed)
        return val if self.part == "val" else ~val


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def path_hash(rel_path: str, seed: int) -> np.uint64:
    """Stable 64-bit hash of a relative path, salted by ``seed``."""
    digest = hashlib.blake2b(
        rel_path.encode("utf-8"), digest_size=8, salt=(seed & (2**64 - 1)).to_bytes(8, "little")
    ).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def is_val(rel_path: str, rows: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """True where row ``rows[i]`` of the file at ``rel_path`` is a validation row."""
    rows = np.asarray(rows, dtype=np.int64)
    with np.errstate(over="ignore"):
        h = _mix(rows.astype(np.uint64) * _GOLDEN + path_hash(rel_path, seed))
    # h is uniform on [0, 2**64): compare it with fraction * 2**64 (no float per row).
    return h < np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))
