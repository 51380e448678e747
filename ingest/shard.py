"""Deterministic sharding and shuffling plans: pure functions of row counts, seed and epoch.

Per epoch the global row order is: the pieces (Parquet row groups, or files) in a seeded random
order (file order without shuffle), each piece's rows in file order. Rank ``r`` of ``W`` takes
one contiguous range of that order, so it reads only its own pieces:

* ``drop_last=False`` (default, exactly once): ranks get ``N // W`` or ``N // W + 1`` rows (the
  first ``N % W`` ranks one more) and every rank runs ``steps = ceil(ceil(N / W) / B)`` steps.
  Batch ``k`` of a rank holds its positions ``[k*B, (k+1)*B)``, so every batch but the last is
  full; the last may be short and, when ``N // W`` is a multiple of ``B`` while ``N % W > 0``,
  a rank with the smaller share gets an empty final batch (0 rows) rather than a repeated row.
  No row is dropped or padded, and all ranks see the same number of steps (DDP-safe: a
  collective on an empty batch still runs).
* ``drop_last=True``: every rank gets exactly ``steps = N // (W*B)`` full batches; the last
  ``N - W*B*steps`` rows of the epoch's order (which differ between epochs when shuffling) are
  dropped.

Within a rank, shuffling is a bounded shuffle buffer in windows: positions are cut into windows
of ``K`` rows (``K`` a multiple of ``B``) and each window is permuted with a generator seeded
by ``(seed, epoch, rank, window)``. Because a window's permutation does not depend on earlier
rows, resuming at batch ``k`` reads from window ``k*B // K`` on, with no replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of piece ``piece`` (positions among the rows the piece yields)."""

    piece: int
    start: int
    stop: int


@dataclass(frozen=True)
class RankPlan:
    """A rank's share of one epoch: ``rows`` positions ``[lo, hi)`` of the global order,
    ``steps`` batches, and the pieces to read as segments."""

    lo: int
    hi: int
    steps: int
    segments: tuple[Segment, ...]

    @property
    def rows(self) -> int:
        return self.hi - self.lo


def piece_order(n_pieces: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The epoch's piece order: a seeded permutation, or ``0..n-1`` without shuffle."""
    if not shuffle:
        return np.arange(n_pieces)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n_pieces)


def rank_range(
    total: int, world_size: int, rank: int, batch_size: int, drop_last: bool
) -> tuple[int, int, int]:
    """``(lo, hi, steps)`` for ``rank``: see the module docstring for the remainder policy."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if drop_last:
        steps = total // (world_size * batch_size)
        per = steps * batch_size
        return rank * per, (rank + 1) * per, steps
    q, r = divmod(total, world_size)
    lo = rank * q + min(rank, r)
    hi = lo + q + (1 if rank < r else 0)
    largest = q + (1 if r else 0)
    return lo, hi, -(-largest // batch_size)


def plan_rank(
    counts: list[int] | np.ndarray,
    *,
    world_size: int,
    rank: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool = False,
) -> RankPlan:
    """Plan one epoch for ``rank`` given each piece's row count."""
    counts = np.asarray(counts, dtype=np.int64)
    order = piece_order(len(counts), shuffle=shuffle, seed=seed, epoch=epoch)
    lo, hi, steps = rank_range(int(counts.sum()), world_size, rank, batch_size, drop_last)
    segments = []
    pos = 0
    for p in order:
        n = int(counts[p])
        a, b = max(lo, pos), min(hi, pos + n)
        if a < b:
            segments.append(Segment(int(p), a - pos, b - pos))
        pos += n
    return RankPlan(lo, hi, steps, tuple(segments))


def window_rows(shuffle_buffer: int, batch_size: int) -> int:
    """Window length ``K``: the shuffle buffer rounded up to a multiple of the batch size."""
    return max(1, -(-max(shuffle_buffer, batch_size) // batch_size)) * batch_size


def window_permutation(n: int, *, seed: int, epoch: int, rank: int, window: int) -> np.ndarray:
    """The order in which a window's ``n`` rows are emitted."""
    return np.random.default_rng([seed, epoch, rank, window]).permutation(n)
