"""Validation: every rule, vectorised over Arrow batches, with its policy applied.

Rules and default policies are in :data:`conveyor.ingest.spec.DEFAULT_POLICIES`. Per chunk of
rows the :class:`Validator` computes one boolean mask per (rule, column) with pyarrow compute
and then, by policy: ``reject`` raises :class:`ValidationError` naming file, row, column, rule
and value; ``quarantine`` marks the row (the first rule it broke is recorded) and writes it,
unchanged, to the :class:`QuarantineWriter`; ``impute`` replaces the value with the spec's
declared one (a categorical without one gets the OOV id). Rules are checked in the order
``type, null, nan, range, unseen_category, unseen_class, duplicate_key`` so that a value that
did not parse is reported as ``type`` and not again as ``null``.

Accounting: ``rows_in = rows_out + rows_quarantined`` (a rejected scan stops with an error),
counted per rule in :class:`Accounting`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conveyor.ingest.errors import SpecError, ValidationError
from conveyor.ingest.quarantine import QuarantineWriter
from conveyor.ingest.source import Chunk
from conveyor.ingest.spec import FeatureSpec


@dataclass
class Accounting:
    """Where every row went. ``quarantined_by_rule`` and ``imputed_by_rule`` count rows / values."""

    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    quarantined_by_rule: Counter = field(default_factory=Counter)
    imputed_by_rule: Counter = field(default_factory=Counter)

    def balanced(self) -> bool:
        return self.rows_in == self.rows_out + self.rows_quarantined

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_quarantined": self.rows_quarantined,
            "quarantined_by_rule": dict(sorted(self.quarantined_by_rule.items())),
            "imputed_by_rule": dict(sorted(self.imputed_by_rule.items())),
        }

    def merge(self, other: Accounting) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.rows_quarantined += other.rows_quarantined
        self.quarantined_by_rule.update(other.quarantined_by_rule)
        self.imputed_by_rule.update(other.imputed_by_rule)


@dataclass
class Checked:
    """A validated chunk: ``table`` holds the spec's columns, typed, imputed, one row per input
    row; ``valid`` marks rows that passed (the others were quarantined; their values are
    meaningless); ``rows`` are their 0-based row indices within ``path``."""

    path: str
    table: pa.Table
    valid: np.ndarray
    rows: np.ndarray


def _mask(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


class Validator:
    """Applies a spec's rules to chunks read from a :class:`~conveyor.ingest.source.Source`.

    Args:
        spec: the feature spec (its ``policies`` override the defaults).
        schema: the source's schema (dataset-level rules are checked against it at once).
        file: the source's name, for dataset-level errors.
        ranges: profiled ``{column: (min, max)}`` used where the spec declares no bound.
        quarantine: where quarantined rows go; None counts them without writing (the loader).
        check_duplicates: the ``duplicate_key`` rule needs every key seen so far in memory.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        schema: pa.Schema,
        *,
        file: str,
        ranges: dict[str, tuple[float, float]] | None = None,
        quarantine: QuarantineWriter | None = None,
        check_duplicates: bool = True,
    ) -> None:
        self.spec = spec
        self.schema = schema
        self.quarantine = quarantine
        self.accounting = Accounting()
        self.check_duplicates = check_duplicates and spec.key is not None
        self._seen_keys: set = set()
        self.missing_fill: dict[str, pa.Scalar] = {}
        self._check_dataset(file)
        self.types = {
            c: (schema.field(c).type if c in schema.names else self.missing_fill[c].type)
            for c in spec.columns()
        }
        self.bounds: dict[str, tuple[float | None, float | None]] = {}
        for f in spec.numeric:
            lo, hi = (ranges or {}).get(f.name, (None, None))
            self.bounds[f.name] = (
                f.min if f.min is not None else lo,
                f.max if f.max is not None else hi,
            )
        for f in spec.numeric:
            if f.impute is None and any(
                spec.policy(r) == "impute" for r in ("type", "null", "nan", "range")
            ):
                raise SpecError(f"numeric {f.name!r}: an impute policy is set but no impute value")
        if spec.label.task != "regression":
            self._classes = pa.array(spec.label.classes).cast(self.types[spec.label.name])
        self._vocab = {
            f.name: pa.array(f.vocab, type=self.types[f.name])
            if f.vocab
            else pa.array([], type=self.types[f.name])
            for f in spec.categorical
        }

    # -- dataset level -----------------------------------------------------------------------
    def _check_dataset(self, file: str) -> None:
        spec, names = self.spec, set(self.schema.names)
        missing = [c for c in self.spec.columns() if c not in names]
        for col in missing:
            if spec.policy("missing_column") == "reject":
                raise ValidationError(
                    file=file,
                    row=None,
                    column=col,
                    rule="missing_column",
                    detail="declared in the spec but absent from the data",
                )
            value = self._impute_value(col)
            if value is None:
                raise SpecError(f"column {col!r} is missing and has no impute value to fill it")
            self.missing_fill[col] = pa.scalar(value)
        known = set(spec.columns()) | set(spec.ignore)
        extra = [c for c in self.schema.names if c not in known]
        if extra and spec.policy("extra_column") == "reject":
            raise ValidationError(
                file=file,
                row=None,
                column=extra[0],
                rule="extra_column",
                detail=f"not in the spec (columns {extra}); add them to 'ignore' or use "
                "the 'ignore' policy",
            )

    def _impute_value(self, col: str) -> Any:
        for f in self.spec.numeric:
            if f.name == col:
                return f.impute
        for f in self.spec.categorical:
            if f.name == col:
                return f.impute
        return None

    # -- row level ---------------------------------------------------------------------------
    def check(self, chunk: Chunk) -> Checked:
        """Validate one chunk; quarantined rows are written and counted; raises on reject."""
        spec, batch = self.spec, chunk.batch
        n = batch.num_rows
        acc = self.accounting
        acc.rows_in += n + len(chunk.bad_lines)
        if chunk.bad_lines:
            self._bad_lines(chunk)
        cols: dict[str, pa.Array] = {}
        for c in spec.columns():
            if c in self.missing_fill:
                cols[c] = pa.array([self.missing_fill[c].as_py()] * n, self.missing_fill[c].type)
                acc.imputed_by_rule["missing_column"] += n
            else:
                cols[c] = batch.column(c)
        bad = np.zeros(n, dtype=bool)
        first: list[tuple[np.ndarray, str, str]] = []  # (rows, rule, column) in rule order

        def apply(rule: str, col: str, mask: np.ndarray, replace: Any = None) -> None:
            nonlocal bad
            mask = mask & ~bad  # a row already quarantined is reported once
            if not mask.any():
                return
            policy = spec.policy(rule)
            if policy == "reject":
                i = int(np.flatnonzero(mask)[0])
                raise ValidationError(
                    file=chunk.path,
                    row=int(chunk.rows[i]),
                    column=col,
                    rule=rule,
                    value=self._original(chunk, col, i),
                )
            if policy == "quarantine":
                bad |= mask
                first.append((mask, rule, col))
                return
            acc.imputed_by_rule[rule] += int(mask.sum())
            if replace is not None:
                cols[col] = pc.if_else(pa.array(mask), replace, cols[col])

        label = spec.label.name
        for c in spec.columns():
            parse = chunk.parse_errors.get(c)
            if parse is not None:
                apply("type", c, parse, self._impute_scalar(c))
        for c in spec.columns():
            apply("null", c, _mask(pc.is_null(cols[c])), self._impute_scalar(c))
        for c in [label, *spec.numeric_names, spec.weight]:
            if c is not None and _is_float(cols[c].type):
                nan = _mask(pc.or_(pc.is_nan(cols[c]), pc.is_inf(cols[c])))
                apply("nan", c, nan, self._impute_scalar(c))
        for c, (lo, hi) in self.bounds.items():
            out = np.zeros(n, dtype=bool)
            if lo is not None:
                out |= _mask(pc.less(cols[c], pa.scalar(lo).cast(cols[c].type, safe=False)))
            if hi is not None:
                out |= _mask(pc.greater(cols[c], pa.scalar(hi).cast(cols[c].type, safe=False)))
            apply("range", c, out, self._impute_scalar(c))
        for f in spec.categorical:
            unseen = _mask(pc.is_null(pc.index_in(cols[f.name], value_set=self._vocab[f.name])))
            unseen &= _mask(pc.is_valid(cols[f.name]))
            apply("unseen_category", f.name, unseen)
        if spec.label.task != "regression":
            unseen = _mask(pc.is_null(pc.index_in(cols[label], value_set=self._classes)))
            apply("unseen_class", label, unseen & _mask(pc.is_valid(cols[label])))
        if self.check_duplicates:
            apply("duplicate_key", spec.key, self._duplicates(cols[spec.key], bad))

        quarantined = int(bad.sum())
        acc.rows_quarantined += quarantined
        acc.rows_out += n - quarantined
        if quarantined:
            self._quarantine(chunk, bad, first)
        table = pa.Table.from_arrays(list(cols.values()), names=list(cols))
        return Checked(chunk.path, table, ~bad, chunk.rows)

    def _impute_scalar(self, col: str) -> pa.Scalar | None:
        value = self._impute_value(col)
        if value is None:
            return None
        return pa.scalar(value).cast(self.types[col])

    def _duplicates(self, keys: pa.Array, bad: np.ndarray) -> np.ndarray:
        """Keys seen earlier in this scan (or earlier in the chunk). Per-row Python work, only
        when a key is declared: a set of every key is what exactly-once needs."""
        out = np.zeros(len(keys), dtype=bool)
        seen = self._seen_keys
        for i, k in enumerate(keys.to_pylist()):
            if bad[i] or k is None:
                continue
            if k in seen:
                out[i] = True
            else:
                seen.add(k)
        return out

    @staticmethod
    def _original(chunk: Chunk, col: str, i: int) -> Any:
        source = (
            chunk.raw if chunk.raw is not None and col in chunk.raw.schema.names else chunk.batch
        )
        return source.column(col)[i].as_py() if col in source.schema.names else None

    def _quarantine(
        self, chunk: Chunk, bad: np.ndarray, first: list[tuple[np.ndarray, str, str]]
    ) -> None:
        idx = np.flatnonzero(bad)
        rule = np.empty(len(bad), dtype=object)
        column = np.empty(len(bad), dtype=object)
        for mask, r, c in first:  # in rule order; each row is in exactly one mask
            rule[mask], column[mask] = r, c
        for i in idx:
            self.accounting.quarantined_by_rule[rule[i]] += 1
        if self.quarantine is None:
            return
        data = chunk.raw if chunk.raw is not None else chunk.batch
        rows = pa.Table.from_batches([data.take(pa.array(idx))])
        values = [self._original(chunk, column[i], int(i)) for i in idx]
        meta = {
            "_file": [chunk.path] * len(idx),
            "_row": [int(chunk.rows[i]) for i in idx],
            "_rule": [rule[i] for i in idx],
            "_column": [column[i] for i in idx],
            "_value": [None if v is None else str(v) for v in values],
            "_reason": [_reason(rule[i], column[i], v) for i, v in zip(idx, values, strict=True)],
        }
        self.quarantine.write(rows, meta)

    def _bad_lines(self, chunk: Chunk) -> None:
        if self.spec.policy("parse") == "reject":
            b = chunk.bad_lines[0]
            raise ValidationError(
                file=chunk.path, row=b.row, column=None, rule="parse", value=b.text, detail=b.reason
            )
        k = len(chunk.bad_lines)
        self.accounting.rows_quarantined += k
        self.accounting.quarantined_by_rule["parse"] += k
        if self.quarantine is None:
            return
        schema = (chunk.raw if chunk.raw is not None else chunk.batch).schema
        empty = pa.Table.from_arrays([pa.nulls(k, f.type) for f in schema], schema=schema)
        self.quarantine.write(
            empty,
            {
                "_file": [chunk.path] * k,
                "_row": [b.row for b in chunk.bad_lines],
                "_rule": ["parse"] * k,
                "_column": [None] * k,
                "_value": [None] * k,
                "_reason": [b.reason for b in chunk.bad_lines],
                "_raw": [b.text for b in chunk.bad_lines],
            },
        )


_REASONS = {
    "type": "does not parse as the column's type",
    "null": "is null in a required column",
    "nan": "is NaN or infinite",
    "range": "is outside the allowed range",
    "unseen_category": "is not in the vocabulary",
    "unseen_class": "is not one of the label's classes",
    "duplicate_key": "repeats a key seen before",
}


def _reason(rule: str, column: str, value: Any) -> str:
    return f"column {column!r}: value {value!r} {_REASONS.get(rule, rule)}"
