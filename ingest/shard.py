"""Deterministic sharding and shuffling plans: pure functions of row counts, seed and epoch.

Per epoch the global row order is: the pieces (Parquet row groups, or files) in a seeded random
order (file order without shuffle), each piece's rows in file order. Rank ``r`` of ``W`` takes
one contiguous range of that order, so it reads only its own pieces.

``drop_last=False`` (default, exactly once): with ``N`` rows, ranks get ``N // W`` or
``N // W + 1`` rows (the first ``N % W`` ranks one more) and every rank runs
``S = ceil(ceil(N / W) / B)`` steps, so DDP ranks see equal step counts. Batch ``k`` of a rank
holds its positions ``[bounds[k], bounds[k+1])`` (:func:`batch_bounds`): steps ``0 .. S-3`` are
full batches of ``B``; the last two steps share the ``T`` remaining rows. Every rank has at
least ``(S-1)*B`` rows (``S`` is rounded up from the largest share), so ``B <= T <= 2B``:

* ``T > B`` (the ranks with the largest share): a full batch, then the ``T - B`` left over;
* ``T == B`` (a rank with the smaller share when ``N // W`` is a multiple of ``B`` and
  ``N % W > 0``): cutting at ``B`` would leave the last step empty, so the ``B`` rows are split
  in halves, ``ceil(B/2)`` then ``floor(B/2)``.

No row is dropped, repeated or padded, and no batch is empty, except where a rank has fewer
rows than steps: ``B == 1`` with ``N % W > 0`` (a rank of ``N // W`` rows runs ``N // W + 1``
steps) or ``N < W`` (a rank of 0 rows runs 1 step). That rank's last step is then an empty
batch (0 rows), which keeps the step count equal (a DDP collective still runs) without
repeating a row; use ``drop_last=True`` to avoid it.

``drop_last=True``: every rank gets exactly ``S = N // (W*B)`` full batches; the last
``N - W*B*S`` rows of the epoch's order (which differ between epochs when shuffling) are
dropped.

Every batch lies inside one ``B``-aligned block of positions ``[j*B, (j+1)*B)``. Within a rank,
shuffling is a bounded shuffle buffer in windows: positions are cut into windows of ``K`` rows
(``K`` a multiple of ``B``, so a batch never straddles two windows) and each window is permuted
with a generator seeded by ``(seed, epoch, rank, window)``. Because a window's permutation does
not depend on earlier rows, resuming at batch ``k`` reads from window ``bounds[k] // K`` on,
with no replay.
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

    def bounds(self, batch_size: int) -> np.ndarray:
        """Batch offsets within the rank's share: see :func:`batch_bounds`."""
        return batch_bounds(self.rows, self.steps, batch_size)


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


def batch_bounds(rows: int, steps: int, batch_size: int) -> np.ndarray:
    """``steps + 1`` non-decreasing offsets from 0 to ``rows``: batch ``k`` holds positions
    ``[o[k], o[k+1])`` (the remainder rule in the module docstring)."""
    B, S = batch_size, steps
    if rows > S * B:
        raise ValueError(f"{rows} rows do not fit in {S} steps of {B}")
    sizes = np.full(S, B, dtype=np.int64)
    if S == 1:
        sizes[0] = rows
    elif S >= 2:
        tail = rows - (S - 2) * B  # rows for the last two steps
        if tail < 0:
            raise ValueError(f"{rows} rows cannot fill {S - 1} steps of {B}")
        if tail > B:
            sizes[-1] = tail - B
        else:  # halves rather than a full batch and an empty one (empty only if tail < 2)
            sizes[-2], sizes[-1] = tail - tail // 2, tail // 2
    return np.concatenate([[0], np.cumsum(sizes)])


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
