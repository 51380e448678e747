"""The held-out validation split, as a pair of filters pushed down into the ingest reader.

A row is a validation row when a 64-bit hash of its split value falls in the lowest
``fraction`` of 65,536 buckets; the training filter is the complement, so every valid row is in
exactly one split, on every run, every rank and every machine, whatever the file layout, sharding
or shuffling. The split value is, in order of preference:

1. ``split_column`` when given: an integer or timestamp column (timestamps as int64 ticks);
2. the spec's ``key`` column when it is an integer or timestamp;
3. otherwise a hash of the row's numeric feature values, each quantised to 1/1024 (so duplicated
   rows land in the same split, which keeps exact copies from leaking into validation).

The hash (multiply by an odd 64-bit constant, wrapping, and keep bits 40..55) is computed by
pyarrow compute inside the scan, so nothing is read twice. :func:`holdout_filters` returns the
expressions; tests and baselines apply the same expressions with ``Table.filter``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from conveyor.ingest.spec import FeatureSpec
from conveyor.trainer.errors import TrainerError

BUCKETS = 1 << 16
_GOLDEN = pa.scalar(-7046029254386353131, pa.int64())  # 0x9E3779B97F4A7C15 as a signed int64
_FEATURE_MULTIPLIERS = (0x2545F4914F6CDD1D, 0x5851F42D4C957F2D, 0x14057B7EF767814F)


def _hashable(column: str, schema: pa.Schema) -> ds.Expression:
    typ = schema.field(column).type
    if pa.types.is_integer(typ):
        return pc.field(column).cast(pa.int64())
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        return pc.field(column).cast(pa.int64())
    raise TrainerError(
        f"split column {column!r} has type {typ}; it must be an integer or a timestamp "
        "(give another with --split-column)"
    )


def _content_value(spec: FeatureSpec, schema: pa.Schema) -> ds.Expression:
    names = [n for n in spec.numeric_names if n in schema.names]
    if not names:
        raise TrainerError(
            "cannot hold out a validation split: the spec has no key and no numeric feature; "
            "give --split-column COLUMN or --val-fraction 0"
        )
    total: ds.Expression | None = None
    for j, name in enumerate(names):
        # Quantise, then mix each feature with its own odd multiplier; wrapping arithmetic.
        q = pc.multiply(pc.field(name).cast(pa.float64()), 1024.0).cast(pa.int64(), safe=False)
        mult = _FEATURE_MULTIPLIERS[j % len(_FEATURE_MULTIPLIERS)] + 2 * j
        term = pc.multiply(q, pa.scalar(mult - (1 << 64) if mult >= 1 << 63 else mult, pa.int64()))
        total = term if total is None else pc.add(total, term)
    assert total is not None
    return total


def split_value(spec: FeatureSpec, schema: pa.Schema, column: str | None = None) -> ds.Expression:
    """The int64 expression whose hash decides each row's split (see the module docstring)."""
    if column is not None:
        if column not in schema.names:
            raise TrainerError(f"split column {column!r} is not in the data")
        return _hashable(column, schema)
    if spec.key is not None and spec.key in schema.names:
        typ = schema.field(spec.key).type
        if pa.types.is_integer(typ) or pa.types.is_timestamp(typ):
            return _hashable(spec.key, schema)
    return _content_value(spec, schema)


def bucket(value: ds.Expression, seed: int = 0) -> ds.Expression:
    """Hash bucket in ``[0, BUCKETS)`` of an int64 expression, salted by ``seed``."""
    mixed = pc.multiply(pc.bit_wise_xor(value, pa.scalar(seed * 0x9E3779B1, pa.int64())), _GOLDEN)
    return pc.bit_wise_and(pc.shift_right(mixed, 40), BUCKETS - 1)


def holdout_filters(
    spec: FeatureSpec,
    schema: pa.Schema,
    fraction: float,
    *,
    seed: int = 0,
    column: str | None = None,
) -> tuple[ds.Expression | None, ds.Expression | None]:
    """``(train_filter, val_filter)``; ``(None, None)`` when ``fraction`` is 0 (no hold-out)."""
    if fraction <= 0:
        return None, None
    b = bucket(split_value(spec, schema, column), seed)
    cut = round(fraction * BUCKETS)
    return pc.greater_equal(b, cut), pc.less(b, cut)
