"""Spec inference: a first, editable spec from the data (``conveyor ingest profile`` without
``--spec``). One pass over the label and the categorical columns only (projection pushdown).

Column kinds by Arrow type: integers, floats and decimals are numeric; strings, booleans and
dictionaries are categorical (vocabulary: the ``max_vocab`` most frequent values, ties by
value); temporal and nested columns are put in ``ignore`` unless named as timestamp. The label's
task: floats and decimals are regression; strings and booleans are classification; integers are
classification when they take at most ``max_classes`` distinct values, regression otherwise. Two
classes make ``binary``.

Hive partition columns (``day=2026-01-01/`` directories, :attr:`Source.partition_names`) go to
``ignore`` by default: they describe where a file sits, not the row, and a model that learns a
day or a shard name does not generalise to new partitions. ``include_partitions=True`` (CLI:
``--include-partition-columns``) types them like any other column.

Text formats (CSV, JSON) have their types inferred by pyarrow from each file's first MiB, so one
bad value there (``"n/a?"`` among numbers) makes a whole column strings. A string feature of a
text source whose non-null values parse as numbers for at least ``numeric_share`` (default
99%) of rows is therefore made numeric; its other values become per-row ``type`` errors once the
source is read with the spec's declared types (as ``conveyor ingest profile`` does).
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from conveyor.ingest.errors import SpecError
from conveyor.ingest.source import Source, cast_text
from conveyor.ingest.spec import CategoricalFeature, FeatureSpec, Label, NumericFeature
from conveyor.ingest.validate import is_number


def _is_categorical(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_boolean(t)
        or pa.types.is_dictionary(t)
    )


def _is_fractional(t: pa.DataType) -> bool:
    """A label of this type is a regression target (a decimal's values are not classes)."""
    return pa.types.is_floating(t) or pa.types.is_decimal(t)


def _sort_key(item: tuple) -> tuple:
    value, count = item
    return (-count, str(value))


def value_counts(source: Source, columns: list[str]) -> dict[str, Counter]:
    """Non-null value counts per column over the whole source (values that fail to parse and
    rows that cannot be split are left out: validation reports them)."""
    counts: dict[str, Counter] = {c: Counter() for c in columns}
    if not columns:
        return counts
    for piece in source.pieces():
        for chunk in source.read(piece, columns=columns):
            for c in columns:
                vc = pc.value_counts(pc.drop_null(chunk.batch.column(c)))
                for value, count in zip(
                    vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True
                ):
                    counts[c][value] += count
    return counts


def columns_with_values(source: Source, columns: list[str]) -> set[str]:
    """The ``columns`` holding at least one non-null value, each read only until it shows
    one (an all-null column is read whole: one column, no values to convert)."""
    left, found = set(columns), set()
    if not left:
        return found
    for piece in source.pieces():
        for chunk in source.read(piece, columns=sorted(left)):
            for c in list(left):
                column = chunk.batch.column(c)
                if column.null_count < len(column):
                    found.add(c)
                    left.discard(c)
            if not left:  # (the rest of this file too: it read on after the last one)
                return found
    return found


def _numeric_share(counts: Counter) -> float:
    """Share of the (string) values, weighted by count, that parse as numbers."""
    total = sum(counts.values())
    if total == 0 or not all(isinstance(v, str) for v in counts):
        return 0.0
    values = list(counts)
    _, bad = cast_text(pa.array(values, type=pa.string()), pa.float64())
    return sum(c for v, c, b in zip(values, counts.values(), bad, strict=True) if not b) / total


def infer_spec(
    source: Source,
    label: str,
    *,
    weight: str | None = None,
    timestamp: str | None = None,
    key: str | None = None,
    max_vocab: int = 10_000,
    max_classes: int = 100,
    numeric_share: float = 0.99,
    include_partitions: bool = False,
) -> FeatureSpec:
    """Infer a :class:`FeatureSpec` for ``source`` with ``label`` as target (see module doc).

    ``include_partitions``: make hive partition columns features (default False: ignored,
    unless one of them is named as label, weight, timestamp or key)."""
    schema = source.schema
    for role, name in (
        ("label", label),
        ("weight", weight),
        ("timestamp", timestamp),
        ("key", key),
    ):
        if name is not None and name not in schema.names:
            raise SpecError(
                f"{source.uri}: {role} column {name!r} is not in the data (columns: {schema.names})"
            )
    special = {label, weight, timestamp, key} - {None}
    partitions = set() if include_partitions else set(source.partition_names)
    numeric, categorical, ignore = [], [], []
    for f in schema:
        if f.name in special:
            continue
        if f.name in partitions:
            ignore.append(f.name)
        elif is_number(f.type):
            numeric.append(f.name)
        elif _is_categorical(f.type):
            categorical.append(f.name)
        else:
            ignore.append(f.name)
    label_type = schema.field(label).type
    if not (is_number(label_type) or _is_categorical(label_type)):
        hint = " (the data has no rows?)" if pa.types.is_null(label_type) else ""
        raise SpecError(
            f"{source.uri}: label {label!r} has type {label_type}; expected a number or a "
            f"string{hint}"
        )
    counted = [*categorical, label] if not _is_fractional(label_type) else categorical
    counts = value_counts(source, counted)
    if _is_fractional(label_type):
        task, classes = "regression", None
    else:
        distinct = sorted(counts[label], key=lambda v: (str(type(v)), v))
        if pa.types.is_integer(label_type) and len(distinct) > max_classes:
            task, classes = "regression", None
        elif len(distinct) < 2:
            raise SpecError(
                f"{source.uri}: label {label!r} has {len(distinct)} distinct value(s) in the "
                "rows read; need >= 2"
            )
        else:
            task = "binary" if len(distinct) == 2 else "multiclass"
            classes = distinct
    if source.format in ("csv", "json"):
        numeric_like = {n for n in categorical if _numeric_share(counts[n]) >= numeric_share}
        numeric = [f.name for f in schema if f.name in numeric_like or f.name in numeric]
        categorical = [n for n in categorical if n not in numeric_like]
    # A column with no value at all (typed by its file, e.g. a Parquet float64 of nulls):
    # as a feature, the null rule would reject every row. Ignored, as text formats' null-
    # typed columns are.
    empty = set(numeric) - columns_with_values(source, numeric)
    empty |= {n for n in categorical if not counts[n]}
    numeric = [n for n in numeric if n not in empty]
    categorical = [n for n in categorical if n not in empty]
    ignore = [f.name for f in schema if f.name in empty or f.name in ignore]
    cats = []
    for name in categorical:
        ranked = sorted(counts[name].items(), key=_sort_key)[:max_vocab]
        cats.append(CategoricalFeature(name, vocab=[v for v, _ in ranked]))
    return FeatureSpec(
        label=Label(label, task, classes),
        numeric=[NumericFeature(n) for n in numeric],
        categorical=cats,
        weight=weight,
        timestamp=timestamp,
        key=key,
        ignore=ignore,
    )
