"""Streaming into torch: sharded, shuffled, prefetched, resumable batches.

:class:`StreamLoader` turns a :class:`~conveyor.ingest.source.Source` and a
:class:`~conveyor.ingest.spec.FeatureSpec` into :class:`Batch` es of torch tensors. A rank's rows
(see :mod:`conveyor.ingest.shard` for the plan and the remainder rule) are read window by window
(``K`` rows, a multiple of the batch size): each chunk's columns are written straight into the
window's preallocated float32 ``[K, F]`` / int64 ``[K, C]`` arrays, categoricals mapped to ids
with ``index_in``, and batches are ``torch.from_numpy`` views of those arrays (zero-copy unless
a row of the batch was quarantined). No Python runs per row.

Validation: a chunk's rows are converted straight away, and those that
:meth:`~conveyor.ingest.validate.Validator.suspect_rows` flags (a null, a value out of bounds) or
whose converted values are not finite (NaN, inf, or a float64 beyond float32's range) or not in
the vocabulary or classes (one ``np.isfinite`` pass and one null count per column; per-row
masks only for a column that fails it) go through
:meth:`~conveyor.ingest.validate.Validator.check`, alone, which imputes, raises on ``reject`` and
marks quarantined rows; the chunk's other rows break no rule. A chunk with unsplittable lines,
parse errors, a missing column to impute or the duplicate-key rule is checked whole.

A quarantined row is left out of its batch but never silently: it is counted
in :attr:`StreamLoader.accounting` (per epoch, for this rank) and, when
:attr:`LoaderConfig.quarantine` names a directory, written unchanged with its reason to
``DIR/epoch{E}-rank{R}-from{K}.parquet`` (``K``: the batch the iteration started from, so a
resumed run writes a new file; after a resume at batch ``K``, files of the same epoch and rank
started earlier may also hold rows of batches from ``K`` on, which the new file supersedes).
Rows are counted and written when the consumer takes their batch, not when the reader reaches
them, so ``rows_in = rows_out + rows_quarantined`` holds for the batches taken, per epoch and
per rank, and ``rows_in`` of a finished epoch is the rank's planned rows plus any text lines
that could not be split into columns (counted with the row that follows them, or the file's
last row). A quarantined row leaves its batch short; a batch whose rows were all quarantined is
empty (the plan's positions, hence exactly-once and resume, do not depend on validation). The
duplicate-key rule is not applied here: a rank sees only its shard; run
``conveyor ingest validate`` for it.

Two background threads (``prefetch > 0``) keep the consumer from waiting: one decodes the next
chunks (pyarrow decodes a Parquet row group's columns in parallel, without the GIL), one
validates and converts windows ahead of the consumer. :meth:`StreamLoader.state_dict` records
the batches the *consumer* has taken (not what the threads have prepared), with this epoch's
accounting, so :meth:`StreamLoader.load_state_dict` resumes with no row repeated or skipped.

Across epochs: the first batch of an epoch waits for its whole first window to be read,
converted and shuffled (about 40 ms for 65,536 rows of the demo data), with the threads idle
since the previous epoch's last window. :meth:`StreamLoader.read_ahead` names the epoch the next
iteration will run; the threads then start on its first windows as soon as the current epoch's
last window is handed over, while the consumer still works through that window, and the next
iteration takes them (any other next iteration drops them).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from conveyor.ingest.counts import CountCache, piece_counts
from conveyor.ingest.errors import LoaderStateError, SourceError
from conveyor.ingest.quarantine import QuarantineWriter, local_output
from conveyor.ingest.shard import RankPlan, plan_rank, window_permutation, window_rows
from conveyor.ingest.source import Chunk, Piece, Source
from conveyor.ingest.spec import OOV_ID, RULES, FeatureSpec
from conveyor.ingest.split import SplitConfig
from conveyor.ingest.validate import Accounting, Validator, as_float

log = logging.getLogger("conveyor.ingest")
# 2: batch bounds split a short rank's last full batch in two (shard.batch_bounds), and the
# state carries the epoch's accounting.
STATE_VERSION = 2
_UNSHUFFLED_WINDOW = 65_536  # rows converted at a time without shuffling
_CHUNK_READAHEAD = 2  # decoded chunks queued ahead of the converter


@dataclass
class Batch:
    """One step's data. ``features`` float32 ``[B, F]`` (spec.numeric order), ``categorical``
    int64 ``[B, C]`` (ids, 0 = OOV), ``label`` int64 class ids ``[B]`` (classification) or
    float32 ``[B]`` (regression), ``weight`` float32 ``[B]`` or None."""

    features: torch.Tensor
    categorical: torch.Tensor
    label: torch.Tensor
    weight: torch.Tensor | None

    def __len__(self) -> int:
        return self.features.shape[0]


@dataclass
class LoaderConfig:
    """``batch_size`` rows per step (default 1024); ``shuffle`` piece order and a
    ``shuffle_buffer``-row window (default 65,536 rows); ``seed``; ``world_size``/``rank`` for
    sharding; ``drop_last`` (see :mod:`conveyor.ingest.shard`); ``prefetch`` batches prepared
    ahead (default 4; 0 = no background threads); ``quarantine``: a directory for quarantined
    rows (default None: counted in the accounting, not written); ``split``: read only one part
    of a seeded hold-out split (:class:`~conveyor.ingest.split.SplitConfig`, applied before
    sharding; default None: every row)."""

    batch_size: int = 1024
    shuffle: bool = False
    shuffle_buffer: int = 65_536
    seed: int = 0
    world_size: int = 1
    rank: int = 0
    drop_last: bool = False
    prefetch: int = 4
    quarantine: str | None = None
    split: SplitConfig | None = None


@dataclass
class _Window:
    """Converted rows ``[index*K, index*K + n)`` of a rank's share, in emission order (after
    the window's shuffle). ``rule``: first rule broken per row (-1 = valid); ``bad``: slots of
    unsplittable lines (one entry each, at the row they are counted with); ``quarantine``: rows
    for the quarantine file with their slots; ``imputed``: values imputed per rule, per row."""

    index: int
    features: np.ndarray
    categorical: np.ndarray
    label: np.ndarray
    weight: np.ndarray | None
    rule: np.ndarray
    bad: list[np.ndarray] = field(default_factory=list)
    quarantine: list[tuple[pa.Table, np.ndarray]] = field(default_factory=list)
    imputed: dict[str, np.ndarray] = field(default_factory=dict)
    # Prefix counts that :meth:`count_prefixes` fills on the producer side, so that the consumer
    # counts a batch's quarantined rows, unsplittable lines and imputed values with a few
    # subtractions: ``rule_upto[i]`` rows before slot ``i`` broke a rule (None: none did),
    # ``line_slots`` the sorted slots of unsplittable lines, ``imputed_upto[rule][i]`` values
    # imputed before slot ``i``.
    rule_upto: np.ndarray | None = None
    line_slots: np.ndarray | None = None
    imputed_upto: dict[str, np.ndarray] = field(default_factory=dict)

    def count_prefixes(self) -> _Window:
        """Fill the prefix counts (after the window's last change, its shuffle)."""
        broken = self.rule >= 0
        if broken.any():
            self.rule_upto = np.concatenate(([0], np.cumsum(broken)))
        if self.bad:
            self.line_slots = np.sort(np.concatenate(self.bad))
        self.imputed_upto = {
            rule: np.concatenate(([0], np.cumsum(per_row, dtype=np.int64)))
            for rule, per_row in self.imputed.items()
        }
        return self


@dataclass
class _Slice:
    """Rows of one chunk in plan order; ``trailing``: a row-less chunk of lines that could not
    be split, found after its file's last row (counted with that row)."""

    chunk: Chunk
    trailing: bool = False


class StreamLoader:
    """Iterable of :class:`Batch`; each ``iter()`` runs the rest of the current epoch.

    Args:
        source: a :class:`Source`, or a path, glob or URI; a string is opened with the spec's
            declared column types (:meth:`FeatureSpec.declared_types`), so CSV/JSON values
            that do not parse as them are quarantined rather than changing the column's type.
        spec: the feature spec; its policies apply (``reject`` raises during iteration).
        config: see :class:`LoaderConfig`; keyword arguments override its fields.
        filter: a pyarrow dataset expression pushed down to the scan.
        ranges: profiled ``{column: (min, max)}`` for the range rule (e.g. from stats.json).
        count_cache: a :class:`~conveyor.ingest.counts.CountCache` (or its JSON path) to read
            and store the plan's row counts in, so other processes (ranks, a resumed run) skip
            the counting pass; counts are also shared within the process without it.
    """

    def __init__(
        self,
        source: Source | str,
        spec: FeatureSpec,
        config: LoaderConfig | None = None,
        *,
        filter: ds.Expression | None = None,
        ranges: dict[str, tuple[float, float]] | None = None,
        count_cache: CountCache | str | Path | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(source, Source):
            source = Source(source, types=spec.declared_types())
        self.source = source
        self.spec = spec
        self.config = replace(config or LoaderConfig(), **overrides)
        if self.config.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.config.batch_size}")
        if self.config.quarantine is not None:  # at once, not at the first iteration
            local_output(self.config.quarantine, "quarantine")
        self.filter = filter
        self.validator = Validator(
            spec,
            self.source.schema,
            file=self.source.uri,
            schema_file=self.source.files[0],
            where_column=self.source.where_column,
            ranges=ranges,
            check_duplicates=False,
            collect=True,
        )
        self.columns = [c for c in spec.columns() if c in self.source.schema.names]
        self.pieces = self.source.pieces()
        # Row counts fix the plan; Parquet/IPC know them from metadata (a split adds only the
        # hash of the row indices), text formats and filters cost a counting pass, cached.
        if count_cache is not None and not isinstance(count_cache, CountCache):
            count_cache = CountCache(count_cache)
        self.counts = piece_counts(self.source, self.pieces, filter, self.config.split, count_cache)
        self._data = _data_fingerprint(self.source, self.pieces, self.counts)
        self._warn_rowless_text_files()
        c = self.config
        self.window = window_rows(
            c.shuffle_buffer if c.shuffle else _UNSHUFFLED_WINDOW, c.batch_size
        )
        self.epoch = 0
        self._next_batch = 0  # batches of this epoch the consumer has taken
        self._accounting = Accounting()
        self.epoch_accounting: dict[int, Accounting] = {}
        self._total = Accounting()  # every batch taken, all epochs (see total_accounting)
        self._reported: dict[str, Any] | None = None  # the last quarantine warning's counts
        self._iteration: object | None = None
        self._announced: int | None = None  # see read_ahead
        # (epoch, its windows from the first, the finalizer that stops them if the loader is
        # collected first: see _start_ahead)
        self._ahead: tuple[int, _Prefetch, weakref.finalize] | None = None
        self._vocab = self.validator.vocab
        self._regression = spec.label.task == "regression"
        if not self._regression:
            self._classes = self.validator.classes

    def _warn_rowless_text_files(self) -> None:
        """A text file with no row that splits into columns has no position in the plan, so no
        rank reads its lines: say so rather than skip it silently."""
        for piece, count in zip(self.pieces, self.counts, strict=True):
            if count or self.source.format not in ("csv", "json"):
                continue
            chunks = self.source.read(piece, [], self.filter, self.config.split)
            lines = sum(len(c.bad_lines) for c in chunks)
            if lines:
                log.warning(
                    "%s: none of its %d lines splits into the columns; the loader skips it "
                    "(run `conveyor ingest validate` to quarantine them)",
                    piece.path,
                    lines,
                )

    # -- plan --------------------------------------------------------------------------------
    def plan(self, epoch: int | None = None) -> RankPlan:
        c = self.config
        return plan_rank(
            self.counts,
            world_size=c.world_size,
            rank=c.rank,
            batch_size=c.batch_size,
            shuffle=c.shuffle,
            seed=c.seed,
            epoch=self.epoch if epoch is None else epoch,
            drop_last=c.drop_last,
        )

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        return self.plan().steps

    @property
    def accounting(self) -> Accounting:
        """Rows of the current epoch's batches taken so far on this rank (or of the epoch just
        finished, until the next one starts); reset by :meth:`set_epoch` and at the start of
        each epoch; finished epochs are in :attr:`epoch_accounting`."""
        return self._accounting

    @property
    def total_accounting(self) -> Accounting:
        """Every batch taken on this rank over all epochs (an epoch run twice counts twice),
        carried across :meth:`state_dict` / :meth:`load_state_dict`."""
        total = Accounting()
        total.merge(self._total)
        total.merge(self._accounting)
        return total

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (like DistributedSampler.set_epoch)."""
        self._new_epoch()
        self.epoch, self._next_batch = epoch, 0

    def read_ahead(self, epoch: int) -> None:
        """Say that the iteration after this epoch's (the one running, or the next to start)
        runs ``epoch`` from its first batch: after this epoch ends by itself (``self.epoch +
        1``) or after ``set_epoch(epoch)``. The background threads start on its first windows
        once this epoch's last window has been handed over, while the consumer still works
        through it, so that epoch's first batch does not wait for a window to be read. A next
        iteration of another epoch or position drops what was read ahead: a wrong guess costs
        reading up to ``prefetch`` batches' windows, never correctness. Rows read ahead are
        counted in the validator's producer-side accounting of the epoch running at the time.
        No effect with ``prefetch=0``."""
        if self.config.prefetch > 0:
            self._announced = epoch

    def close(self) -> None:
        """Stop reading ahead (the threads of a finished iteration end by themselves).

        After :meth:`read_ahead`, the next epoch's read-ahead holds two threads and, for a
        CSV or Arrow IPC file streamed in several record batches, an open file, until that
        epoch runs. They do not keep the loader alive: a loader dropped without ``close()`` stops
        them when it is collected (at once under CPython's reference counting, or at the next
        garbage collection when it is in a reference cycle), and they end soon after, closing
        the file. ``close()`` (or ``with StreamLoader(...) as loader:``) stops them at once and
        waits for them."""
        self._announced = None
        self._drop_ahead()

    def __enter__(self) -> StreamLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_ahead(self) -> None:
        """Start reading the announced epoch, if any (see :meth:`read_ahead`)."""
        epoch, self._announced = self._announced, None
        if epoch is None or (self._ahead is not None and self._ahead[0] == epoch):
            return
        self._drop_ahead()
        plan = self.plan(epoch)
        if plan.rows:
            windows = self._open_windows(plan, 0, epoch)
            assert isinstance(windows, _Prefetch)  # read_ahead is a no-op without threads
            # The threads hold the loader only through a weak proxy (see _open_windows), so a
            # loader dropped while they wait for their epoch is collected, and this stops them.
            # Not at exit: _close_live_prefetches stops and joins them there, as before.
            stop = weakref.finalize(self, windows.stop)
            stop.atexit = False
            self._ahead = (epoch, windows, stop)

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            _, windows, stop = self._ahead
            self._ahead = None
            stop.detach()
            windows.close()

    def _new_epoch(self) -> None:
        """Fold the current epoch's counts into the total and start from zero."""
        self._total.merge(self._accounting)
        self._accounting = Accounting()
        # The validator's own counts are producer-side (read-ahead included): per epoch too.
        self.validator.accounting = Accounting()

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Position to resume from: the epoch, the batches of it already consumed and their
        accounting, with the settings and a fingerprint of the data (``data``: files, pieces
        and per-piece row counts, see :func:`_data_fingerprint`) that fix the plan."""
        c = self.config
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches_done": self._next_batch,
            "seed": c.seed,
            "shuffle": c.shuffle,
            "shuffle_buffer": c.shuffle_buffer,
            "batch_size": c.batch_size,
            "world_size": c.world_size,
            "rank": c.rank,
            "drop_last": c.drop_last,
            "split": None if c.split is None else f"{c.split.key()}/{c.split.part}",
            "rows": int(sum(self.counts)),
            "data": dict(self._data),
            "accounting": self._accounting.to_dict(),
            "total_accounting": self._total.to_dict(),  # earlier epochs, this one excluded
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` was taken; it must come from a loader with the same data and
        settings (else :class:`LoaderStateError` says which setting differs)."""
        mine = self.state_dict()
        for key in (
            "version",
            "seed",
            "shuffle",
            "batch_size",
            "world_size",
            "rank",
            "drop_last",
            "split",
            "rows",
        ):
            if state.get(key) != mine[key]:
                raise LoaderStateError(
                    f"state_dict does not match this loader: {key} is {state.get(key)!r}, "
                    f"loader has {mine[key]!r}"
                )
        if state["shuffle"] and state["shuffle_buffer"] != mine["shuffle_buffer"]:
            raise LoaderStateError("state_dict does not match this loader: shuffle_buffer")
        if "data" in state:  # states saved before it was recorded resume on the row count
            _check_same_data(state["data"], mine["data"])
        self.epoch, self._next_batch = int(state["epoch"]), int(state["batches_done"])
        self._drop_ahead()
        self._accounting = Accounting.from_dict(state["accounting"])
        self._total = Accounting.from_dict(state.get("total_accounting", Accounting().to_dict()))

    # -- iteration (consumer side) -----------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        token = self._iteration = object()
        if self._next_batch == 0 and self._accounting.rows_in:
            self._new_epoch()
        plan = self.plan()
        c, K = self.config, self.window
        bounds = plan.bounds(c.batch_size)
        first = self._next_batch
        windows: Iterator[_Window] | None = None
        writer = None
        if c.quarantine is not None:
            name = f"epoch{self.epoch:04d}-rank{c.rank:05d}-from{first:08d}.parquet"
            writer = QuarantineWriter(Path(c.quarantine) / name)
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[2].detach()  # this iteration holds the loader, and closes the windows
            if ahead[0] != self.epoch or first != 0:
                ahead[1].close()
                ahead = None
        last_window = -(-plan.rows // K) - 1
        try:
            if ahead is not None:
                windows = ahead[1]
            elif first < plan.steps and bounds[first] < plan.rows:
                windows = self._open_windows(plan, int(bounds[first]) // K, self.epoch)
            win: _Window | None = None
            for k in range(first, plan.steps):
                lo, hi = int(bounds[k]), int(bounds[k + 1])
                if hi > lo:
                    while win is None or win.index < lo // K:
                        win = next(windows)
                        if win.index == last_window and self._iteration is token:
                            self._start_ahead()  # this epoch's threads are done
                    base = win.index * K
                    batch = self._take(win, lo - base, hi - base, writer)
                else:  # only where the rank has fewer rows than steps (see shard)
                    batch = self._take(None, 0, 0, writer)
                if self._iteration is token:
                    self._next_batch = k + 1
                yield batch
        finally:
            if windows is not None:
                windows.close()
            if writer is not None:
                writer.close()
        if self._iteration is token:
            self._start_ahead()  # when not started above (no window was handed over)
        if self._iteration is token and self._next_batch >= plan.steps:
            self._finish_epoch()

    def _finish_epoch(self) -> None:
        acc = self._accounting
        self.epoch_accounting[self.epoch] = acc
        # This epoch's counts only, and only when they differ from the last warning's: the same
        # rows fail again every epoch (and every validation pass), which is no news.
        counts = {"in": acc.rows_in, "quarantined": acc.rows_quarantined,
                  "rules": dict(acc.quarantined_by_rule)}  # fmt: skip
        if acc.rows_quarantined and counts != self._reported:
            log.warning(
                "epoch %d rank %d: %d of %d rows failed validation and were quarantined (%s)%s",
                self.epoch,
                self.config.rank,
                acc.rows_quarantined,
                acc.rows_in,
                dict(sorted(acc.quarantined_by_rule.items())),
                "" if self._reported is None else " (changed since the last report)",
            )
            self._reported = counts
        self.epoch, self._next_batch = self.epoch + 1, 0

    def _take(self, win: _Window | None, a: int, b: int, writer: QuarantineWriter | None) -> Batch:
        """Batch of window slots ``[a, b)``; counts (and writes) its quarantined rows. Runs once
        per step on the consumer's thread, so a batch without a broken row costs a few
        subtractions on the window's prefix counts (see :meth:`_Window.count_prefixes`)."""
        if win is None:
            return self._empty()
        acc = self._accounting
        n_bad = 0 if win.rule_upto is None else int(win.rule_upto[b] - win.rule_upto[a])
        n_bad_lines = 0
        if win.line_slots is not None:
            n_bad_lines = int(
                np.searchsorted(win.line_slots, b) - np.searchsorted(win.line_slots, a)
            )
        acc.rows_in += (b - a) + n_bad_lines
        acc.rows_out += (b - a) - n_bad
        acc.rows_quarantined += n_bad + n_bad_lines
        sel: slice | np.ndarray = slice(a, b)
        if n_bad:
            rule = win.rule[a:b]
            codes = np.bincount(rule[rule >= 0], minlength=len(RULES))
            for code in np.flatnonzero(codes):
                acc.quarantined_by_rule[RULES[code]] += int(codes[code])
            sel = np.flatnonzero(rule < 0) + a
        if n_bad_lines:
            acc.quarantined_by_rule["parse"] += n_bad_lines
        for rule_name, upto in win.imputed_upto.items():
            n = int(upto[b] - upto[a])
            if n:
                acc.imputed_by_rule[rule_name] += n
        if writer is not None:
            for table, slots in win.quarantine:
                mine = (slots >= a) & (slots < b)
                if mine.any():
                    writer.write_table(table.filter(pa.array(mine)))

        def t(arr: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(arr[sel] if isinstance(sel, slice) else _rows(arr, sel))

        return Batch(
            features=t(win.features),
            categorical=t(win.categorical),
            label=t(win.label),
            weight=t(win.weight) if win.weight is not None else None,
        )

    def _empty(self) -> Batch:
        spec = self.spec
        return Batch(
            features=torch.empty((0, len(spec.numeric)), dtype=torch.float32),
            categorical=torch.empty((0, len(spec.categorical)), dtype=torch.int64),
            label=torch.empty(0, dtype=torch.float32 if self._regression else torch.int64),
            weight=torch.empty(0, dtype=torch.float32) if spec.weight is not None else None,
        )

    # -- reading and conversion (producer side) ----------------------------------------------
    def _open_windows(self, plan: RankPlan, first_window: int, epoch: int) -> Iterator[_Window]:
        """:meth:`_windows`, prepared by the background threads when ``prefetch > 0``.

        The generators run on a weak proxy of the loader: a read-ahead's threads keep their
        frames until the epoch runs, and a bound generator would keep a dropped loader (and
        so the threads, see :meth:`_start_ahead`) alive for the life of the process. Calls
        from them (``self._window(...)``) hold the loader only while they run; a thread that
        finds it gone ends with a ``ReferenceError`` that nobody takes."""
        c = self.config
        windows = type(self)._windows(weakref.proxy(self), plan, first_window, epoch)
        if c.prefetch <= 0:
            return windows
        depth = max(1, -(-c.prefetch * c.batch_size // self.window))
        return _Prefetch(windows, depth, "conveyor-ingest-convert")

    def _windows(self, plan: RankPlan, first_window: int, epoch: int) -> Iterator[_Window]:
        """Converted windows of ``epoch`` (whose plan is ``plan``) from ``first_window`` to the
        end of the rank's share."""
        c, K = self.config, self.window
        # Unbound, so that a proxied ``self`` stays a proxy in _slices (see _open_windows).
        slices: Iterator[_Slice] = self.__class__._slices(self, plan, first_window * K)
        if c.prefetch > 0:
            slices = _Prefetch(slices, _CHUNK_READAHEAD, "conveyor-ingest-read")
        stream = _SliceStream(slices)
        try:
            for w in range(first_window, -(-plan.rows // K)):
                n = min(K, plan.rows - w * K)
                win = self._window(w, n, stream)
                if c.shuffle and n > 1:
                    perm = window_permutation(n, seed=c.seed, epoch=epoch, rank=c.rank, window=w)
                    win = _permute(win, perm)
                yield win.count_prefixes()
        finally:
            slices.close()

    def _slices(self, plan: RankPlan, skip: int) -> Iterator[_Slice]:
        """The rank's rows in plan order from position ``skip``, as chunk slices. Lines that
        could not be split come with the chunk they were found in, or, after a file's last
        row, as a ``trailing`` row-less slice; each is read by the rank that owns the row it
        is counted with."""
        for seg in plan.segments:
            n = seg.stop - seg.start
            if skip >= n:
                skip -= n
                continue
            lo, hi = seg.start + skip, seg.stop
            skip = 0
            pos = 0
            owns_end = hi == self.counts[seg.piece]
            chunks = self.source.read(
                self.pieces[seg.piece], self.columns, self.filter, self.config.split
            )
            for chunk in chunks:
                m = len(chunk.rows)
                a, b = max(lo - pos, 0), min(hi - pos, m)
                if m == 0 and chunk.bad_lines:
                    if pos >= hi and owns_end:
                        yield _Slice(chunk, trailing=True)
                    elif lo <= pos < hi:
                        yield _Slice(chunk)
                elif a < b:
                    yield _Slice(_slice_chunk(chunk, a, b))
                pos += m
                if pos >= hi and not owns_end:
                    break
            if pos < hi or (owns_end and pos != hi):
                # Row counts fixed the plan; a file that has since changed cannot be read
                # exactly once, so stop naming it rather than shift every later row.
                raise SourceError(
                    self.pieces[seg.piece].path,
                    f"yields {pos} rows where {self.counts[seg.piece]} were counted when the "
                    "loader was made: it changed during the epoch",
                )

    def _new_window(self, index: int, n: int) -> _Window:
        spec = self.spec
        return _Window(
            index=index,
            features=np.empty((n, len(spec.numeric)), dtype=np.float32),
            categorical=np.empty((n, len(spec.categorical)), dtype=np.int64),
            label=np.empty(n, dtype=np.float32 if self._regression else np.int64),
            weight=np.empty(n, dtype=np.float32) if spec.weight is not None else None,
            rule=np.full(n, -1, dtype=np.int8),
        )

    def _window(self, index: int, n: int, stream: _SliceStream) -> _Window:
        win = self._new_window(index, n)
        off = 0
        while True:
            item = stream.next(n - off)
            if item is None:
                break
            chunk = item.chunk
            m = len(chunk.rows)
            if m == 0:  # lines that could not be split: count them with a row of this window
                anchor = off - 1 if item.trailing else off
                self._check(chunk, win, max(anchor, 0))
                continue
            suspect = self.validator.suspect_rows(chunk)
            if suspect is None:
                self._check(chunk, win, off)
            else:
                unconverted = self._fill(chunk.batch, win, off)
                if unconverted is not None:
                    suspect |= unconverted
                if suspect.any():
                    self._check_rows(chunk, np.flatnonzero(suspect), win, off)
            off += m
        if off != n:
            raise RuntimeError(f"window {index}: read {off} rows, planned {n}")
        return win

    def _check(self, chunk: Chunk, win: _Window, off: int) -> None:
        """The slow path: full validation of a chunk written at window row ``off``."""
        checked = self.validator.check(chunk)
        m = len(chunk.rows)
        if m:
            self._fill(checked.table, win, off)
            win.rule[off : off + m] = checked.rule
        for table, idx in checked.quarantined:
            win.quarantine.append((table, idx + off))
        if chunk.bad_lines:
            win.bad.append(np.full(len(chunk.bad_lines), off, dtype=np.int64))
        for rule, mask in checked.imputed:
            per_row = win.imputed.setdefault(rule, np.zeros(len(win.rule), dtype=np.int32))
            per_row[off : off + m] += mask

    def _check_rows(self, chunk: Chunk, rows: np.ndarray, win: _Window, off: int) -> None:
        """The slow path for rows ``rows`` (positions in ``chunk``, which is written at window
        row ``off`` and passed :meth:`Validator.suspect_rows`): they are validated alone and
        written over their slots; the chunk's other rows break no rule and stay as written."""
        checked = self.validator.check(_take_rows(chunk, rows))
        slots = rows + off
        part = self._new_window(win.index, len(rows))
        self._fill(checked.table, part, 0)
        win.features[slots] = part.features
        win.categorical[slots] = part.categorical
        win.label[slots] = part.label
        if win.weight is not None:
            win.weight[slots] = part.weight
        win.rule[slots] = checked.rule
        for table, idx in checked.quarantined:
            win.quarantine.append((table, slots[idx]))
        for rule, mask in checked.imputed:
            per_row = win.imputed.setdefault(rule, np.zeros(len(win.rule), dtype=np.int32))
            per_row[slots] += mask

    def _fill(self, data: pa.RecordBatch | pa.Table, win: _Window, off: int) -> np.ndarray | None:
        """Write ``data``'s spec columns into window rows ``[off, off + len)``. Returns None when
        every value is finite and every category and class is known, else a boolean mask of
        the rows where one is not. With :meth:`Validator.suspect_rows`, the rows in neither
        mask break no rule. Per-row masks are made only for a column that fails its one
        vectorised check (a NaN, an unknown category)."""
        spec, m = self.spec, data.num_rows
        rows = slice(off, off + m)
        failed: list[np.ndarray] = []

        def finite(values: np.ndarray) -> None:
            if not np.isfinite(values).all():  # one pass; per-row only when it fails
                bad = ~np.isfinite(values)
                failed.append(bad.any(axis=1) if bad.ndim == 2 else bad)

        def known(ids: pa.Array | pa.ChunkedArray) -> None:
            if ids.null_count:
                failed.append(_null_mask(ids))

        feats = win.features[rows]
        for j, name in enumerate(spec.numeric_names):
            _write(feats[:, j], data.column(name))
        finite(feats)
        for j, name in enumerate(spec.categorical_names):
            ids = pc.index_in(data.column(name), value_set=self._vocab[name])
            known(ids)
            dst = win.categorical[rows, j]
            _write(dst, pc.fill_null(ids, OOV_ID - 1))
            dst += 1  # vocab[i] -> i + 1; unseen (and null) -> OOV_ID
        label = data.column(spec.label.name)
        if self._regression:
            _write(win.label[rows], label)
            finite(win.label[rows])
        else:
            ids = pc.index_in(label, value_set=self._classes)
            known(ids)
            _write(win.label[rows], pc.fill_null(ids, 0))
        if win.weight is not None:
            _write(win.weight[rows], data.column(spec.weight))
            finite(win.weight[rows])
        if not failed:
            return None
        return np.logical_or.reduce(failed) if len(failed) > 1 else failed[0]


def _data_fingerprint(source: Source, pieces: list[Piece], counts: list[int]) -> dict[str, Any]:
    """What a loader's plan depends on, small enough for every checkpoint: the number of files
    and of pieces, a digest of the files' paths relative to the source root, in plan order
    (as the hold-out split names them, so a copy of the data mounted elsewhere, or the same
    files in a bucket, match), and a digest of each piece's row group and row count. Nothing
    is read for it, and no mtime enters it, so a faithful copy resumes."""
    files = [source.relative_path(path) for path in dict.fromkeys(p.path for p in pieces)]
    layout = [[p.file_index, p.row_group, int(n)] for p, n in zip(pieces, counts, strict=True)]
    return {
        "files": len(files),
        "pieces": len(pieces),
        "paths": _digest(files),
        "counts": _digest(layout),
    }


def _digest(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _check_same_data(saved: dict[str, Any], mine: dict[str, Any]) -> None:
    """Raise :class:`LoaderStateError` naming the first way the data of a state's loader
    differs from this loader's (same total rows: that was compared first)."""
    what = "state_dict does not match this loader's data"
    if saved.get("files") != mine["files"]:
        raise LoaderStateError(
            f"{what}: it was taken over {saved.get('files')} files, this loader reads "
            f"{mine['files']}"
        )
    if saved.get("paths") != mine["paths"]:
        raise LoaderStateError(
            f"{what}: it was taken over other files (their paths relative to the source root, "
            "in order, differ: a file renamed, added or replaced)"
        )
    if saved.get("pieces") != mine["pieces"]:
        raise LoaderStateError(
            f"{what}: it was taken over {saved.get('pieces')} pieces (Parquet row groups, or "
            f"whole files), this loader has {mine['pieces']} (a file rewritten?)"
        )
    if saved.get("counts") != mine["counts"]:
        raise LoaderStateError(
            f"{what}: its pieces held other row counts, with the same total (a file "
            "rewritten, or another filter?)"
        )


class _SliceStream:
    """Slices taken up to ``n`` rows at a time, splitting a slice across windows."""

    def __init__(self, slices: Iterator[_Slice]) -> None:
        self.slices = slices
        self.pending: _Slice | None = None

    def _peek(self) -> _Slice | None:
        if self.pending is None:
            self.pending = next(self.slices, None)
        return self.pending

    def next(self, room: int) -> _Slice | None:
        """The next slice with at most ``room`` rows; with ``room == 0`` only a trailing
        row-less slice (which belongs with the row just taken), else None."""
        item = self._peek()
        if item is None:
            return None
        m = len(item.chunk.rows)
        if room == 0:
            if m == 0 and item.trailing:
                self.pending = None
                return item
            return None
        if m > room:
            self.pending = _Slice(_slice_chunk(item.chunk, room, m))
            return _Slice(_slice_chunk(item.chunk, 0, room))
        self.pending = None
        return item


def _write(dst: np.ndarray, col: pa.Array | pa.ChunkedArray) -> None:
    """Copy an Arrow column into ``dst`` (a numpy view), casting to ``dst.dtype`` on the way.
    Nulls are written as 0: they only remain in rows that failed validation, whose values are
    never used. A float64 beyond float32's range is written as +-inf without a warning: the
    caller's finite check flags its row, which :meth:`Validator.check` quarantines (``range``)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    off = 0
    for chunk in chunks:
        chunk = as_float(chunk)  # a decimal's numpy form is an array of Python objects
        if chunk.null_count:
            chunk = pc.fill_null(chunk, pa.scalar(0).cast(chunk.type))
        n = len(chunk)
        with np.errstate(over="ignore"):
            np.copyto(dst[off : off + n], chunk.to_numpy(zero_copy_only=False), casting="unsafe")
        off += n


def _null_mask(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Boolean mask of the null values of ``col``."""
    return np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)


def _take_rows(chunk: Chunk, rows: np.ndarray) -> Chunk:
    """Rows ``rows`` of a chunk without unsplittable lines or parse errors."""
    take = pa.array(rows)
    return replace(
        chunk,
        batch=chunk.batch.take(take),
        rows=chunk.rows[rows],
        raw=chunk.raw.take(take) if chunk.raw is not None else None,
    )


def _permute(win: _Window, perm: np.ndarray) -> _Window:
    """The window in emission order ``perm`` (slot ``i`` holds row ``perm[i]``)."""
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return _Window(
        index=win.index,
        features=_rows(win.features, perm),
        categorical=_rows(win.categorical, perm),
        label=_rows(win.label, perm),
        weight=_rows(win.weight, perm) if win.weight is not None else None,
        rule=_rows(win.rule, perm),
        bad=[inverse[s] for s in win.bad],
        quarantine=[(t, inverse[s]) for t, s in win.quarantine],
        imputed={r: _rows(v, perm) for r, v in win.imputed.items()},
    )


def _rows(arr: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``arr[index]`` along the first axis; ``np.take`` gathers the rows of a 2-D array several
    times faster than fancy indexing (numpy 2.4, one thread: 0.4 against 3.2 ms for the four
    arrays of a 65,536-row window)."""
    return np.take(arr, index, axis=0)


def _slice_chunk(chunk: Chunk, a: int, b: int) -> Chunk:
    """Rows ``[a, b)`` of a chunk. Its unsplittable lines stay with the slice that starts at
    row 0: they are counted with the chunk's first row."""
    if a == 0 and b == len(chunk.rows):
        return chunk
    return replace(
        chunk,
        batch=chunk.batch.slice(a, b - a),
        rows=chunk.rows[a:b],
        raw=chunk.raw.slice(a, b - a) if chunk.raw is not None else None,
        parse_errors={c: m[a:b] for c, m in chunk.parse_errors.items()},
        bad_lines=chunk.bad_lines if a == 0 else [],
    )


# Prefetch threads still running at interpreter exit (an iteration abandoned
# without close(), an epoch read ahead) are stopped and joined first: a daemon
# thread left inside pyarrow's C++ reader while the interpreter tears down can
# abort the process ("terminate called without an active exception").
_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_prefetches() -> None:
    # Bounded: a read stuck on a remote filesystem must not keep the process alive.
    deadline = time.monotonic() + 10.0
    for prefetch in list(_LIVE):
        prefetch.close(timeout=max(0.0, deadline - time.monotonic()))


class _Prefetch:
    """Iterator over ``it`` run in a daemon thread, started at once, ``depth`` items ahead;
    errors are re-raised in the consumer. :meth:`close` stops the thread (and closes ``it``
    there), whether or not anything was taken."""

    _DONE = object()

    def __init__(self, it: Iterator, depth: int, name: str) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._work, args=(it,), name=name, daemon=True)
        self._thread.start()
        _LIVE.add(self)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, it: Iterator) -> None:
        try:
            for item in it:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> _Prefetch:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is self._DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def stop(self) -> None:
        """Ask the thread to stop, without waiting: it ends once its current item is made (or
        at once when waiting to queue one), closing ``it``. Safe from any thread, this one's
        own included (a finalizer may run there)."""
        self._finished = True
        self._stop.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it (at most ``timeout`` seconds; None = no bound)."""
        self.stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive() and (deadline is None or time.monotonic() < deadline):
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(0.05)
