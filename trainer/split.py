"""The held-out validation split: key filters pushed into the scan, or the reader's own split.

Every valid row is in exactly one part, on every run, rank and machine, whatever the sharding or
shuffling. How a row's part is decided, in order of preference:

1. ``split_column`` when given, else the spec's ``key`` when it is an integer or timestamp
   column: a row is a validation row when a 64-bit hash of that value falls in the lowest
   ``fraction`` of 65,536 buckets (the training filter is the complement). The hash (multiply by
   an odd 64-bit constant, wrapping, keep bits 40..55) is computed by pyarrow compute inside the
   scan. A row keeps its part when files are rewritten, merged or renamed. A null key is in
   neither part.
2. otherwise the reader's split (:class:`conveyor.ingest.split.SplitConfig`): a seeded hash of
   the row's file path under the source root and its index in the file, applied by the reader
   before sharding, with no column read. It needs no key, but rewriting or renaming a file
   reshuffles that file's rows between the parts, and exact duplicate rows may land in both.

:func:`holdout` returns the choice; :func:`holdout_filters` the key filters alone (tests and
baselines apply them with ``Table.filter``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from conveyor.ingest.spec import FeatureSpec
from conveyor.ingest.split import SplitConfig
from conveyor.trainer.errors import TrainerError

BUCKETS = 1 << 16
_GOLDEN = pa.scalar(-7046029254386353131, pa.int64())  # 0x9E3779B97F4A7C15 as a signed int64


def _hashable(column: str, schema: pa.Schema) -> ds.Expression:
    typ = schema.field(column).type
    if pa.types.is_integer(typ) or pa.types.is_timestamp(typ) or pa.types.is_date64(typ):
        # Unchecked: a uint64 key past 2**63 wraps to a negative int64 (fine for a hash, and
        # the same bits on every run), where the checked cast failed the scan, which the
        # reader then reported as a corrupt file. Values that fit are cast exactly as before.
        return pc.field(column).cast(pa.int64(), safe=False)
    if pa.types.is_date32(typ):
        # Arrow has no date32 -> int64 cast; date32 is an int32 of days, widened exactly.
        return pc.field(column).cast(pa.int32()).cast(pa.int64())
    raise TrainerError(
        f"split column {column!r} has type {typ}; it must be an integer or a timestamp "
        "(give another with --split-column)"
    )


def key_column(spec: FeatureSpec, schema: pa.Schema, column: str | None = None) -> str | None:
    """The integer/timestamp column whose hash decides the split: ``column`` (checked), else
    the spec's key when it has such a type, else None (use the reader's split)."""
    if column is not None:
        if column not in schema.names:
            raise TrainerError(f"split column {column!r} is not in the data")
        _hashable(column, schema)
        return column
    if spec.key is not None and spec.key in schema.names:
        typ = schema.field(spec.key).type
        if pa.types.is_integer(typ) or pa.types.is_timestamp(typ):
            return spec.key
    return None


def bucket(value: ds.Expression, seed: int = 0) -> ds.Expression:
    """Hash bucket in ``[0, BUCKETS)`` of an int64 expression, salted by ``seed``."""
    salt = (seed * 0x9E3779B1 + 2**63) % 2**64 - 2**63  # wrapped into int64, as C would
    mixed = pc.multiply(pc.bit_wise_xor(value, pa.scalar(salt, pa.int64())), _GOLDEN)
    return pc.bit_wise_and(pc.shift_right(mixed, 40), BUCKETS - 1)


def holdout_filters(
    spec: FeatureSpec,
    schema: pa.Schema,
    fraction: float,
    *,
    seed: int = 0,
    column: str | None = None,
) -> tuple[ds.Expression | None, ds.Expression | None]:
    """``(train_filter, val_filter)`` on the key column (see :func:`key_column`); ``(None,
    None)`` when ``fraction`` is 0 (no hold-out). Raises when there is no such column."""
    if fraction <= 0:
        return None, None
    name = key_column(spec, schema, column)
    if name is None:
        raise TrainerError("no integer or timestamp key column: use holdout() (the reader split)")
    b = bucket(_hashable(name, schema), seed)
    cut = round(fraction * BUCKETS)
    return pc.greater_equal(b, cut), pc.less(b, cut)


@dataclass(frozen=True)
class Holdout:
    """The run's hold-out: ``method`` is ``"none"``, ``"key:COLUMN"`` or ``"position"`` (the
    reader split); the filters or the split configs of each part (None where unused)."""

    method: str
    train_filter: ds.Expression | None = None
    val_filter: ds.Expression | None = None
    train_split: SplitConfig | None = None
    val_split: SplitConfig | None = None


def holdout(
    spec: FeatureSpec,
    schema: pa.Schema,
    fraction: float,
    *,
    seed: int = 0,
    column: str | None = None,
) -> Holdout:
    """Key filters when a key column exists (stable across file rewrites), otherwise the
    reader's position split (see the module docstring)."""
    if fraction <= 0:
        return Holdout("none")
    name = key_column(spec, schema, column)
    if name is not None:
        train, val = holdout_filters(spec, schema, fraction, seed=seed, column=name)
        return Holdout(f"key:{name}", train_filter=train, val_filter=val)
    return Holdout(
        "position",
        train_split=SplitConfig(fraction, seed, "train"),
        val_split=SplitConfig(fraction, seed, "val"),
    )
