"""Streaming into torch: sharded, shuffled, prefetched, resumable batches.

:class:`StreamLoader` turns a :class:`~conveyor.ingest.source.Source` and a
:class:`~conveyor.ingest.spec.FeatureSpec` into :class:`Batch` es of torch tensors. Rows are read
window by window (see :mod:`conveyor.ingest.shard` for the plan), validated with the spec's
rules (rows that fail are counted in :attr:`StreamLoader.accounting` and logged, not yielded;
``reject`` raises), and converted column-wise: each numeric column is written into a
preallocated float32 ``[K, F]`` array, categoricals are mapped to ids with ``index_in``, and the
batches are ``torch.from_numpy`` views of those arrays. No Python runs per row.

A batch holds the rows at its planned positions that passed validation, so batch sizes are
``B`` except for the last batch of an epoch and where rows were quarantined; the number of
steps per epoch is the same on every rank whatever the data (``len(loader)``).

A background thread reads, validates and converts ahead of the consumer (``prefetch`` batches
in a bounded queue). :meth:`StreamLoader.state_dict` records the batches the *consumer* has
taken (not what the thread has prepared), so :meth:`load_state_dict` resumes with no row
repeated or skipped. The duplicate-key rule is not applied here: a rank sees only its shard;
run ``conveyor ingest validate`` for it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from conveyor.ingest.errors import LoaderStateError
from conveyor.ingest.shard import RankPlan, plan_rank, window_permutation, window_rows
from conveyor.ingest.source import Source
from conveyor.ingest.spec import OOV_ID, FeatureSpec
from conveyor.ingest.validate import Accounting, Validator

log = logging.getLogger("conveyor.ingest")
STATE_VERSION = 1


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
    """``batch_size`` rows per step; ``shuffle`` piece order and a ``shuffle_buffer``-row window
    (default 65,536); ``seed``; ``world_size``/``rank`` for sharding; ``drop_last`` (see
    :mod:`conveyor.ingest.shard`); ``prefetch`` batches prepared ahead (0 = no thread)."""

    batch_size: int = 1024
    shuffle: bool = False
    shuffle_buffer: int = 65_536
    seed: int = 0
    world_size: int = 1
    rank: int = 0
    drop_last: bool = False
    prefetch: int = 4


class _Stop(Exception):
    pass


class StreamLoader:
    """Iterable of :class:`Batch`; each ``iter()`` runs the rest of the current epoch.

    Args:
        source: a :class:`Source` or anything :class:`Source` accepts (path, glob, URI).
        spec: the feature spec; its policies apply (``reject`` raises during iteration).
        config: see :class:`LoaderConfig`; keyword arguments override its fields.
        filter: a pyarrow dataset expression pushed down to the scan.
        ranges: profiled ``{column: (min, max)}`` for the range rule (e.g. from stats.json).
    """

    def __init__(
        self,
        source: Source | str,
        spec: FeatureSpec,
        config: LoaderConfig | None = None,
        *,
        filter: ds.Expression | None = None,
        ranges: dict[str, tuple[float, float]] | None = None,
        **overrides: Any,
    ) -> None:
        self.source = source if isinstance(source, Source) else Source(source)
        self.spec = spec
        self.config = LoaderConfig(**{**asdict(config or LoaderConfig()), **overrides})
        self.filter = filter
        self.validator = Validator(
            spec, self.source.schema, file=self.source.uri, ranges=ranges, check_duplicates=False
        )
        self.columns = [c for c in spec.columns() if c in self.source.schema.names]
        self.pieces = self.source.pieces()
        # Row counts fix the plan; Parquet/IPC know them from metadata, text formats and
        # filters cost a counting pass here, once.
        self.counts = [self.source.count_rows(p, filter) for p in self.pieces]
        self.window = window_rows(
            self.config.shuffle_buffer if self.config.shuffle else 65_536, self.config.batch_size
        )
        self.epoch = 0
        self._next_batch = 0  # batches of this epoch the consumer has taken
        self._vocab = {
            f.name: pa.array(f.vocab, type=self.validator.types[f.name]) for f in spec.categorical
        }
        if spec.label.task != "regression":
            self._classes = pa.array(spec.label.classes).cast(self.validator.types[spec.label.name])

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
        return self.validator.accounting

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (like DistributedSampler.set_epoch)."""
        self.epoch, self._next_batch = epoch, 0

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Position to resume from: the epoch and the batches of it already consumed."""
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
            "rows": int(sum(self.counts)),
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
            "rows",
        ):
            if state.get(key) != mine[key]:
                raise LoaderStateError(
                    f"state_dict does not match this loader: {key} is {state.get(key)!r}, "
                    f"loader has {mine[key]!r}"
                )
        if state["shuffle"] and state["shuffle_buffer"] != mine["shuffle_buffer"]:
            raise LoaderStateError("state_dict does not match this loader: shuffle_buffer")
        self.epoch, self._next_batch = int(state["epoch"]), int(state["batches_done"])

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        plan = self.plan()
        if self._next_batch >= plan.steps:  # a finished epoch: go on with the next one
            self.epoch, self._next_batch = self.epoch + 1, 0
            plan = self.plan()
        produced = self._produce(plan, self._next_batch)
        if self.config.prefetch > 0:
            produced = _prefetch(produced, self.config.prefetch)
        try:
            for batch in produced:
                self._next_batch += 1
                yield batch
        finally:
            produced.close()
        if self._next_batch >= plan.steps:
            acc = self.accounting
            if acc.rows_quarantined:
                log.warning(
                    "epoch %d rank %d: %d of %d rows failed validation and were skipped (%s)",
                    self.epoch,
                    self.config.rank,
                    acc.rows_quarantined,
                    acc.rows_in,
                    dict(acc.quarantined_by_rule),
                )
            self.epoch, self._next_batch = self.epoch + 1, 0

    def _produce(self, plan: RankPlan, first_batch: int) -> Iterator[Batch]:
        c, K, B = self.config, self.window, self.config.batch_size
        start = first_batch * B
        w = start // K
        rows = _RowStream(self._rows(plan, w * K))
        for k in range(first_batch, plan.steps):
            if k == first_batch or (k * B) % K == 0:
                w = (k * B) // K
                n_window = max(0, min(K, plan.rows - w * K))
                arrays = self._convert(rows.take(n_window))
                if c.shuffle and n_window > 1:
                    perm = window_permutation(
                        n_window, seed=c.seed, epoch=self.epoch, rank=c.rank, window=w
                    )
                    arrays = {name: a[perm] for name, a in arrays.items()}
            a, b = k * B - w * K, min((k + 1) * B - w * K, max(0, plan.rows - w * K))
            a = min(a, b)
            yield self._batch(arrays, a, b)

    def _rows(self, plan: RankPlan, skip: int) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """Validated rows of the rank in plan order from position ``skip``: (table, valid)."""
        for seg in plan.segments:
            n = seg.stop - seg.start
            if skip >= n:
                skip -= n
                continue
            lo, hi = seg.start + skip, seg.stop
            skip = 0
            pos = 0
            for chunk in self.source.read(self.pieces[seg.piece], self.columns, self.filter):
                m = len(chunk.rows)
                a, b = max(lo - pos, 0), min(hi - pos, m)
                pos += m
                if a < b:
                    checked = self.validator.check(_slice_chunk(chunk, a, b))
                    yield checked.table, checked.valid
                if pos >= hi:
                    break

    def _convert(self, taken: tuple[pa.Table | None, np.ndarray]) -> dict[str, np.ndarray]:
        """Arrow columns -> numpy arrays for a whole window, column by column."""
        table, valid = taken
        spec = self.spec
        n = len(valid)
        out: dict[str, np.ndarray] = {"valid": valid}
        feats = np.empty((n, len(spec.numeric)), dtype=np.float32)
        cats = np.empty((n, len(spec.categorical)), dtype=np.int64)
        if table is None:
            regression = spec.label.task == "regression"
            out["label"] = np.empty(0, np.float32 if regression else np.int64)
            if spec.weight is not None:
                out["weight"] = np.empty(0, np.float32)
            out.update(features=feats, categorical=cats)
            return out
        for j, name in enumerate(spec.numeric_names):
            feats[:, j] = _numpy(table.column(name))
        for j, name in enumerate(spec.categorical_names):
            ids = pc.index_in(table.column(name), value_set=self._vocab[name])
            cats[:, j] = _numpy(pc.fill_null(ids, OOV_ID - 1), np.int64) + 1
        label = table.column(spec.label.name)
        if spec.label.task == "regression":
            out["label"] = _numpy(label, np.float32)
        else:
            out["label"] = _numpy(
                pc.fill_null(pc.index_in(label, value_set=self._classes), 0), np.int64
            )
        if spec.weight is not None:
            out["weight"] = _numpy(table.column(spec.weight), np.float32)
        out.update(features=feats, categorical=cats)
        return out

    def _batch(self, arrays: dict[str, np.ndarray], a: int, b: int) -> Batch:
        sel: slice | np.ndarray = slice(a, b)
        valid = arrays["valid"][a:b]
        if not valid.all():
            sel = np.flatnonzero(valid) + a

        def t(name: str) -> torch.Tensor:
            return torch.from_numpy(arrays[name][sel])

        return Batch(
            features=t("features"),
            categorical=t("categorical"),
            label=t("label"),
            weight=t("weight") if "weight" in arrays else None,
        )


class _RowStream:
    """Validated (table, valid) pieces, taken ``n`` rows at a time across piece boundaries."""

    def __init__(self, parts: Iterator[tuple[pa.Table, np.ndarray]]) -> None:
        self.parts = parts
        self.pending: tuple[pa.Table, np.ndarray] | None = None

    def take(self, n: int) -> tuple[pa.Table | None, np.ndarray]:
        tables, valids, got = [], [], 0
        while got < n:
            if self.pending is not None:
                table, valid = self.pending
                self.pending = None
            else:
                table, valid = next(self.parts)
            if not isinstance(table, pa.Table):
                table = pa.Table.from_batches([table]) if table.num_rows else None
            need = n - got
            if table is None:
                continue
            if table.num_rows > need:
                self.pending = (table.slice(need), valid[need:])
                table, valid = table.slice(0, need), valid[:need]
            tables.append(table)
            valids.append(valid)
            got += table.num_rows
        if not tables:
            return None, np.zeros(0, dtype=bool)
        return pa.concat_tables(tables), np.concatenate(valids)


def _numpy(col: pa.ChunkedArray | pa.Array, dtype: type = np.float32) -> np.ndarray:
    """A column as numpy, zero-copy when it has one chunk and no nulls (nulls only occur in
    rows that failed validation, whose values are never used, so they become 0)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if col.null_count:
        col = pc.fill_null(col, pa.scalar(0).cast(col.type))
    arr = col.to_numpy(zero_copy_only=False)
    return arr if arr.dtype == dtype else arr.astype(dtype)


def _slice_chunk(chunk, a: int, b: int):
    if a == 0 and b == len(chunk.rows) and not chunk.bad_lines:
        return chunk
    from dataclasses import replace

    return replace(
        chunk,
        batch=chunk.batch.slice(a, b - a),
        rows=chunk.rows[a:b],
        raw=chunk.raw.slice(a, b - a) if chunk.raw is not None else None,
        parse_errors={c: m[a:b] for c, m in chunk.parse_errors.items()},
        # Unsplittable rows occupy no position; count them once, with the chunk's first slice.
        bad_lines=chunk.bad_lines if a == 0 else [],
    )


def _prefetch(it: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run ``it`` in a daemon thread, ``depth`` items ahead; errors are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)

    thread = threading.Thread(target=work, name="conveyor-ingest-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
