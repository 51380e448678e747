"""Validation: every rule, vectorised over Arrow batches, with its policy applied.

Rules and default policies are in :data:`conveyor.ingest.spec.DEFAULT_POLICIES`. Per chunk of
rows the :class:`Validator` computes one boolean mask per (rule, column) with pyarrow compute
and then, by policy: ``reject`` raises :class:`ValidationError` naming file, row, column, rule
and value; ``quarantine`` marks the row (the first rule it broke is recorded) and writes it,
unchanged, to the :class:`QuarantineWriter`; ``impute`` replaces the value with the spec's
declared one (a categorical without one gets the OOV id). Rules are checked in the order
``type, null, nan, range, unseen_category, unseen_class, duplicate_key`` so that a value that
did not parse is reported as ``type`` and not again as ``null``. ``range`` covers, besides the
declared (or profiled) bounds, the range of float32: a finite float64 that would be infinite in
the loader's float32 batch (a numeric feature, a regression label, the weight) breaks it.

Accounting: ``rows_in = rows_out + rows_quarantined`` (a rejected scan stops with an error),
counted per rule in :class:`Accounting`.

The streaming loader adds a fast path (:meth:`Validator.fast_clean`, row by row
:meth:`Validator.suspect_rows`): a row of a chunk with no parse errors, with no null in the
spec's columns and every bounded column inside its bounds can only break the ``nan`` and
vocabulary rules, which the loader checks on its converted arrays in one vectorised pass; only
the rows that fail either are run through :meth:`Validator.check`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conveyor.ingest.errors import SourceError, SpecError, ValidationError
from conveyor.ingest.quarantine import QuarantineWriter, quarantine_table
from conveyor.ingest.source import Chunk
from conveyor.ingest.spec import RULES, FeatureSpec

# Rule -> small integer, for per-row rule codes (-1 = the row passed).
RULE_CODES: dict[str, int] = {rule: i for i, rule in enumerate(RULES)}

# The loader's batches hold numeric features, a regression label and the weight as float32. A
# finite float64 of this magnitude or more rounds to +-inf there: it is halfway between
# float32's largest finite value (2**128 - 2**104, about 3.4028235e38) and 2**128, and the tie
# rounds to the even neighbour, 2**128 = inf. Anything smaller rounds to a finite float32.
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
_FLOAT32_REASON = (
    f"is beyond float32's range (|value| > {float(np.finfo(np.float32).max):.8g}): "
    "it would be infinite in the batch"
)


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Accounting:
        return cls(
            int(data["rows_in"]),
            int(data["rows_out"]),
            int(data["rows_quarantined"]),
            Counter(data.get("quarantined_by_rule", {})),
            Counter(data.get("imputed_by_rule", {})),
        )

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
    meaningless); ``rows`` are their 0-based row indices within ``path``; ``rule`` the
    :data:`RULE_CODES` code of the first rule each row broke (-1 if it passed).

    ``quarantined`` (only when the validator collects, see :class:`Validator`): the quarantined
    rows as quarantine-file tables (:func:`~conveyor.ingest.quarantine.quarantine_table`), each
    with the chunk-relative index of its rows; rows that could not be split into columns (bad
    lines) have no index of their own and carry index 0. ``imputed``: ``(rule, rows)`` for each
    column where the impute policy replaced values.
    """

    path: str
    table: pa.Table
    valid: np.ndarray
    rows: np.ndarray
    rule: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    quarantined: list[tuple[pa.Table, np.ndarray]] = field(default_factory=list)
    imputed: list[tuple[str, np.ndarray]] = field(default_factory=list)


def numeric_bounds(
    spec: FeatureSpec, ranges: dict[str, tuple[float, float]] | None = None
) -> dict[str, tuple[float | None, float | None]]:
    """``{numeric feature: (low, high)}`` of the ``range`` rule: the spec's min/max, else
    the profiled ``ranges`` (None: no bound). The exported serving program imputes by
    these same bounds (conveyor.trainer.export)."""
    bounds = {}
    for f in spec.numeric:
        lo, hi = (ranges or {}).get(f.name, (None, None))
        bounds[f.name] = (f.min if f.min is not None else lo, f.max if f.max is not None else hi)
    return bounds


def _mask(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def value_type(t: pa.DataType) -> pa.DataType:
    """The type of ``t``'s values: a dictionary column's (pandas ``category`` columns are
    stored as dictionaries in Parquet) is its dictionary's value type, any other is ``t``.
    Vocabularies, classes and imputed values are of this type: ``index_in`` matches a
    dictionary column's values against a plain value set, but not against a dictionary one."""
    return t.value_type if pa.types.is_dictionary(t) else t


def is_number(t: pa.DataType) -> bool:
    """A type the spec can read as a number: an integer, a float, or a decimal (a warehouse's
    ``NUMERIC``/``DECIMAL(p, s)`` column, read as float64: see :func:`as_float`)."""
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def as_float(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A decimal column as float64 (the nearest double of each value: the batches hold
    float32 anyway), any other as it is; so its NaN, range and float32 checks, statistics and
    imputed values are those of a float column."""
    return col.cast(pa.float64()) if pa.types.is_decimal(col.type) else col


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


def _outside(col: pa.Array | pa.ChunkedArray, lo: float | None, hi: float | None) -> np.ndarray:
    """Rows of ``col`` below ``lo`` or above ``hi`` (inclusive bounds; None: none), compared as
    numbers, as Python compares the column's min and max with them in
    :meth:`Validator.fast_clean`. Casting a bound to an integer column's type would truncate a
    fractional one (``min=0.5`` letting 0 through) and wrap one beyond the type (``max=1e19``
    on int64 putting every row out), so an integer column is compared with the bound's integer
    neighbour (``x < lo`` is ``x < ceil(lo)``), or not at all when the bound lies beyond the
    type's values; any other numeric column is compared as float64 (exact for float16/32).
    A NaN bound bounds nothing, as no number compares below or above it."""
    t = col.type
    out = np.zeros(len(col), dtype=bool)
    if pa.types.is_integer(t):
        info = np.iinfo(t.to_pandas_dtype())
        if lo is not None and lo > info.min:
            out |= (
                _mask(pc.is_valid(col))
                if lo > info.max
                else _mask(pc.less(col, pa.scalar(math.ceil(lo), t)))
            )
        if hi is not None and hi < info.max:
            out |= (
                _mask(pc.is_valid(col))
                if hi < info.min
                else _mask(pc.greater(col, pa.scalar(math.floor(hi), t)))
            )
        return out
    if t != pa.float64():
        col = col.cast(pa.float64())
    if lo is not None:
        out |= _mask(pc.less(col, pa.scalar(float(lo), pa.float64())))
    if hi is not None:
        out |= _mask(pc.greater(col, pa.scalar(float(hi), pa.float64())))
    return out


class Validator:
    """Applies a spec's rules to chunks read from a :class:`~conveyor.ingest.source.Source`.

    Args:
        spec: the feature spec (its ``policies`` override the defaults).
        schema: the source's schema (dataset-level rules are checked against it at once).
        file: the source's name, for dataset-level errors.
        schema_file: the file ``schema`` was read from (a source's first file, which every
            other file must match), named when a column's type does not fit the spec; default
            ``file``.
        ranges: profiled ``{column: (min, max)}`` used where the spec declares no bound.
        quarantine: where quarantined rows go; None counts them without writing.
        check_duplicates: the ``duplicate_key`` rule needs every key seen so far in memory.
        collect: return quarantined rows in :attr:`Checked.quarantined` (the loader writes them
            when the consumer takes their batch, so a read-ahead never writes a row twice).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        schema: pa.Schema,
        *,
        file: str,
        schema_file: str | None = None,
        where_column: Callable[[str], tuple[str, int | None]] | None = None,
        ranges: dict[str, tuple[float, float]] | None = None,
        quarantine: QuarantineWriter | None = None,
        check_duplicates: bool = True,
        collect: bool = False,
    ) -> None:
        self.spec = spec
        self.schema = schema
        self.quarantine = quarantine
        self.collect = collect
        self.accounting = Accounting()
        self.check_duplicates = check_duplicates and spec.key is not None
        self._seen_keys: set = set()
        self.missing_fill: dict[str, pa.Scalar] = {}
        self._where_column = where_column
        self._check_dataset(file)
        schema_file = schema_file or file
        self._check_numbers(schema_file)
        self.types = {
            c: (schema.field(c).type if c in schema.names else self.missing_fill[c].type)
            for c in spec.columns()
        }
        for c in self._float32_columns():  # read as float64 (as_float)
            if pa.types.is_decimal(self.types[c]):
                self.types[c] = pa.float64()
        self.bounds = numeric_bounds(spec, ranges)
        for name, rule in spec.missing_impute_values()[:1]:
            raise SpecError(
                f"numeric {name!r}: an impute policy is set but no impute value (rule {rule!r})"
            )
        # The label's classes (None for regression) and each vocabulary as arrays of their
        # column's value type (a dictionary column's values), for index_in.
        self.classes: pa.Array | None = None
        if spec.label.task != "regression":
            self.classes = self._values(spec.label.classes, spec.label.name, schema_file)
        self.vocab: dict[str, pa.Array] = {
            f.name: self._values(f.vocab, f.name, schema_file) for f in spec.categorical
        }
        # Cast once, here: a value of the wrong type would otherwise fail mid-scan (or
        # mid-epoch), at the first row that needs it.
        self.impute: dict[str, pa.Scalar | None] = {
            c: self._impute_cast(c, schema_file) for c in spec.columns()
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
            # Named where it first appears (Source.where_column): the source's folder alone
            # left a user to search every file for a key one JSON row may hold.
            where, row = file, None
            if self._where_column is not None:
                where, row = self._where_column(extra[0])
            raise ValidationError(
                file=where,
                row=row,
                column=extra[0],
                rule="extra_column",
                detail=f"not in the spec (columns {extra}); add them to 'ignore' or use "
                "the 'ignore' policy",
            )

    def _check_late_columns(self, chunk: Chunk) -> None:
        """The ``extra_column`` rule for JSON keys that first appear past the part of a file
        its columns were inferred from (see ``Chunk.late_columns``): the same rule as for a
        column found up front, named with the row that first holds it."""
        spec = self.spec
        known = set(spec.columns()) | set(spec.ignore)
        extra = {k: row for k, row in chunk.late_columns.items() if k not in known}
        if extra and spec.policy("extra_column") == "reject":
            key, row = next(iter(extra.items()))
            raise ValidationError(
                file=chunk.path,
                row=row if row >= 0 else None,
                column=key,
                rule="extra_column",
                detail=f"not in the spec (keys {sorted(extra)} first appear past the part of the "
                "file its columns were inferred from); add them to 'ignore' or use the "
                "'ignore' policy",
            )

    def _check_numbers(self, file: str) -> None:
        """A column the spec reads as a number (a numeric feature, a regression label, the
        weight) must be an integer, floating-point or decimal column. Text formats are read as the
        spec's declared types, but Parquet and IPC files carry their own, and comparing a
        string column with numeric bounds, or converting it for torch, is not a row's fault:
        the whole column is wrong. So, like a file whose types contradict the first file's
        (:meth:`~conveyor.ingest.source.Source._check_schemas`), it is a :class:`SourceError`
        naming ``file``, the column and both types, before any row is read."""
        for c in self._float32_columns():
            if c not in self.schema.names:
                continue  # missing: imputed with the spec's number, or rejected above
            found = self.schema.field(c).type
            if not is_number(found):
                raise SourceError(
                    file,
                    f"column {c!r} is {found}, but the spec reads it as a number "
                    "(expected an integer, floating-point or decimal type)",
                )

    def _values(self, values: list[Any], col: str, file: str) -> pa.Array:
        """A vocabulary or the label's classes as an array of ``col``'s value type (see
        :func:`value_type`); values that are not of that type (``"a"`` for an int64 column)
        are a :class:`SourceError` naming ``file``, the column and both types (see
        :meth:`_check_numbers`)."""
        typ = value_type(self.types[col])
        try:
            return pa.array(values).cast(typ) if values else pa.array([], type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            found = "/".join(sorted({type(v).__name__ for v in values}))
            shown = f"{values[:3]!r}"[:-1] + (", ...]" if len(values) > 3 else "]")
            raise SourceError(
                file, f"column {col!r} is {typ}, but the spec's values for it are {found} {shown}"
            ) from None

    def _impute_cast(self, col: str, file: str) -> pa.Scalar | None:
        """``col``'s declared impute value as a scalar of its value type (None: none); a value
        that is not of that type (``"unknown"`` for an int64 categorical) is a
        :class:`SourceError` naming ``file``, the column and both types (see :meth:`_values`)."""
        value = self._impute_value(col)
        if value is None:
            return None
        typ = value_type(self.types[col])
        try:
            return pa.scalar(value).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            raise SourceError(
                file,
                f"column {col!r} is {typ}, but the spec's impute value for it is "
                f"{type(value).__name__} {value!r}",
            ) from None

    def _float32_columns(self) -> list[str]:
        """The columns the loader writes as float32: numeric features, a regression label and
        the weight (a class label becomes an int64 id)."""
        spec = self.spec
        cols = [*spec.numeric_names, spec.weight]
        if spec.label.task == "regression":
            cols.insert(0, spec.label.name)
        return [c for c in cols if c is not None]

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
        if chunk.late_columns:
            self._check_late_columns(chunk)
        n = batch.num_rows
        acc = self.accounting
        acc.rows_in += n + len(chunk.bad_lines)
        collected: list[tuple[pa.Table, np.ndarray]] = []
        imputed: list[tuple[str, np.ndarray]] = []  # (rule, rows) per imputed column
        if chunk.bad_lines:
            collected += self._bad_lines(chunk)
        cols: dict[str, pa.Array] = {}
        for c in spec.columns():
            if c in self.missing_fill:
                cols[c] = pa.array([self.missing_fill[c].as_py()] * n, self.missing_fill[c].type)
                imputed.append(("missing_column", np.ones(n, dtype=bool)))
            else:
                cols[c] = batch.column(c)
        for c in self._float32_columns():
            cols[c] = as_float(cols[c])
        bad = np.zeros(n, dtype=bool)
        # (rows, rule, column, reason or None for the rule's usual one), in rule order
        first: list[tuple[np.ndarray, str, str, str | None]] = []
        categorical = set(spec.categorical_names)

        def apply(
            rule: str, col: str, mask: np.ndarray, replace: Any = None, reason: str | None = None
        ) -> None:
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
                    detail=reason or "",
                )
            if policy == "quarantine":
                bad |= mask
                first.append((mask, rule, col, reason))
                return
            if replace is None and col not in categorical:
                # Nothing declared to write (a label, weight, key or timestamp): the value
                # stays bad, so the row is quarantined rather than passed on broken.
                bad |= mask
                first.append((mask, rule, col, reason))
                return
            imputed.append((rule, mask))
            if replace is not None:
                cols[col] = pc.if_else(pa.array(mask), replace, cols[col])

        label = spec.label.name
        for c in spec.columns():
            parse = chunk.parse_errors.get(c)
            if parse is not None:
                # Named, since a value can be a fine timestamp or number of another type; a
                # text column's only such value is one that is not UTF-8 (a Latin-1 CSV).
                typ = value_type(self.types[c])
                text = pa.types.is_string(typ) or pa.types.is_large_string(typ)
                reason = "is not UTF-8 text" if text else f"does not parse as {typ}"
                apply("type", c, parse, self._impute_scalar(c), reason)
        for c in spec.columns():
            apply("null", c, _mask(pc.is_null(cols[c])), self._impute_scalar(c))
        for c in [label, *spec.numeric_names, spec.weight]:
            if c is not None and _is_float(cols[c].type):
                nan = _mask(pc.or_(pc.is_nan(cols[c]), pc.is_inf(cols[c])))
                apply("nan", c, nan, self._impute_scalar(c))
        for c in self._float32_columns():
            # Finite here but infinite in the float32 batch: out of the range a batch can hold.
            if _is_float(cols[c].type) and cols[c].type.bit_width > 32:
                huge = _mask(pc.greater_equal(pc.abs(cols[c]), FLOAT32_OVERFLOW))
                apply("range", c, huge, self._impute_scalar(c), _FLOAT32_REASON)
        for c, (lo, hi) in self.bounds.items():
            apply("range", c, _outside(cols[c], lo, hi), self._impute_scalar(c))
        for f in spec.categorical:
            unseen = _mask(pc.is_null(pc.index_in(cols[f.name], value_set=self.vocab[f.name])))
            unseen &= _mask(pc.is_valid(cols[f.name]))
            apply("unseen_category", f.name, unseen, self._impute_scalar(f.name))
        if spec.label.task != "regression":
            unseen = _mask(pc.is_null(pc.index_in(cols[label], value_set=self.classes)))
            apply("unseen_class", label, unseen & _mask(pc.is_valid(cols[label])))
        if self.check_duplicates:
            apply("duplicate_key", spec.key, self._duplicates(cols[spec.key], bad))

        # Imputed values count only in rows that went out (a later rule may quarantine a row).
        imputed = [(rule, mask & ~bad) for rule, mask in imputed]
        for rule, mask in imputed:
            acc.imputed_by_rule[rule] += int(mask.sum())
        quarantined = int(bad.sum())
        acc.rows_quarantined += quarantined
        acc.rows_out += n - quarantined
        codes = np.full(n, -1, dtype=np.int8)
        for mask, r, _, _ in first:
            codes[mask] = RULE_CODES[r]
        if quarantined:
            collected += self._quarantine(chunk, bad, first)
        table = pa.Table.from_arrays(list(cols.values()), names=list(cols))
        return Checked(chunk.path, table, ~bad, chunk.rows, codes, collected, imputed)

    def fast_clean(self, chunk: Chunk) -> bool:
        """True when no row of ``chunk`` can break a rule other than ``nan``,
        ``unseen_category`` and ``unseen_class`` (which the caller checks on converted data):
        no bad lines or parse errors, no imputed missing column, no key rule, no null in the
        spec's columns and every bounded column within its bounds. Costs one null count per
        column and one min/max per bounded column, no per-row masks."""
        if chunk.bad_lines or chunk.parse_errors or self.missing_fill or self.check_duplicates:
            return False
        batch = chunk.batch
        if any(batch.column(c).null_count for c in self.spec.columns()):
            return False
        for c, (lo, hi) in self.bounds.items():
            if (lo is None and hi is None) or batch.num_rows == 0:
                continue
            mm = pc.min_max(batch.column(c))
            least, most = mm["min"].as_py(), mm["max"].as_py()
            if least is None or (lo is not None and least < lo) or (hi is not None and most > hi):
                return False
        return True

    def suspect_rows(self, chunk: Chunk) -> np.ndarray | None:
        """Row by row what :meth:`fast_clean` decides for the chunk: None when the chunk must go
        through :meth:`check` whole (unsplittable lines, parse errors, an imputed missing
        column, the key rule), else a boolean mask of the rows with a null in one of the spec's
        columns or a bounded value out of bounds (as :meth:`check`'s ``range`` rule compares).
        The other rows can break only the ``nan`` and vocabulary rules. Costs what
        :meth:`fast_clean` does, plus a per-row mask for each column that has a null or an
        out-of-bounds value."""
        if chunk.bad_lines or chunk.parse_errors or self.missing_fill or self.check_duplicates:
            return None
        batch = chunk.batch
        suspect = np.zeros(batch.num_rows, dtype=bool)
        for c in self.spec.columns():
            if batch.column(c).null_count:
                suspect |= _mask(pc.is_null(batch.column(c)))
        for c, (lo, hi) in self.bounds.items():
            if (lo is None and hi is None) or batch.num_rows == 0:
                continue
            col = batch.column(c)
            mm = pc.min_max(col)
            least, most = mm["min"].as_py(), mm["max"].as_py()
            if least is None:  # every value null: flagged above
                continue
            below = lo is not None and least < lo
            above = hi is not None and most > hi
            if below or above:
                suspect |= _outside(col, lo if below else None, hi if above else None)
        return suspect

    def _impute_scalar(self, col: str) -> pa.Scalar | None:
        return self.impute[col]

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
        self, chunk: Chunk, bad: np.ndarray, first: list[tuple[np.ndarray, str, str, str | None]]
    ) -> list[tuple[pa.Table, np.ndarray]]:
        idx = np.flatnonzero(bad)
        rule = np.empty(len(bad), dtype=object)
        column = np.empty(len(bad), dtype=object)
        why = np.empty(len(bad), dtype=object)
        for mask, r, c, w in first:  # in rule order; each row is in exactly one mask
            rule[mask], column[mask], why[mask] = r, c, w
        for i in idx:
            self.accounting.quarantined_by_rule[rule[i]] += 1
        if self.quarantine is None and not self.collect:
            return []
        data = chunk.raw if chunk.raw is not None else chunk.batch
        rows = pa.Table.from_batches([data.take(pa.array(idx))])
        values = [self._original(chunk, column[i], int(i)) for i in idx]
        meta = {
            "_file": [chunk.path] * len(idx),
            "_row": [int(chunk.rows[i]) for i in idx],
            "_rule": [rule[i] for i in idx],
            "_column": [column[i] for i in idx],
            "_value": [None if v is None else str(v) for v in values],
            "_reason": [
                _reason(rule[i], column[i], v, why[i]) for i, v in zip(idx, values, strict=True)
            ],
        }
        table = quarantine_table(rows, meta, self.schema.names)
        if self.quarantine is not None:
            self.quarantine.write_table(table)
        return [(table, idx)] if self.collect else []

    def _bad_lines(self, chunk: Chunk) -> list[tuple[pa.Table, np.ndarray]]:
        if self.spec.policy("parse") == "reject":
            b = chunk.bad_lines[0]
            raise ValidationError(
                file=chunk.path, row=b.row, column=None, rule="parse", value=b.text, detail=b.reason
            )
        k = len(chunk.bad_lines)
        self.accounting.rows_quarantined += k
        self.accounting.quarantined_by_rule["parse"] += k
        if self.quarantine is None and not self.collect:
            return []
        schema = (chunk.raw if chunk.raw is not None else chunk.batch).schema
        empty = pa.Table.from_arrays([pa.nulls(k, f.type) for f in schema], schema=schema)
        table = quarantine_table(
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
            self.schema.names,
        )
        if self.quarantine is not None:
            self.quarantine.write_table(table)
        return [(table, np.zeros(k, dtype=np.int64))] if self.collect else []


_REASONS = {
    "type": "does not parse as the column's type",
    "null": "is null in a required column",
    "nan": "is NaN or infinite",
    "range": "is outside the allowed range",
    "unseen_category": "is not in the vocabulary",
    "unseen_class": "is not one of the label's classes",
    "duplicate_key": "repeats a key seen before",
}


def _reason(rule: str, column: str, value: Any, reason: str | None = None) -> str:
    """The quarantine file's sentence; ``reason`` overrides the rule's usual wording."""
    return f"column {column!r}: value {value!r} {reason or _REASONS.get(rule, rule)}"
