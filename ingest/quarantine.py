"""The quarantine file: rows that failed validation, unchanged, with why.

A Parquet file whose columns are the rows' own columns as read (for CSV the original text, for
the other formats the original typed values) followed by:

``_file`` (string), ``_row`` (int64, 0-based row within ``_file``; -1 if unknown), ``_rule``
(the first rule the row broke), ``_column``, ``_value`` (the offending value as a string),
``_reason`` (a sentence) and ``_raw`` (the original line for rows that could not be split
into columns, such as a ragged CSV row; null otherwise; their column values are null).

The rows' own columns keep their names. Where the data has a column named like one of those
(a ``_row`` index of its own, say), every metadata column takes one more leading underscore
(``__file`` ... ``__raw``; again, while any still collides): :func:`meta_names` gives them, the
file's schema metadata holds them as a JSON list under ``conveyor.quarantine.meta``, and they
are the file's last seven columns. A name in a file never means two things, and a row's own
value is never lost.

Tables of one file can disagree on a column's type: CSV rows and JSON rows re-read line by line
are kept as their text, rows of a JSON file pyarrow could read whole as typed values, a column
may be all null (null type) in one table, and only some tables may have a column. A Parquet
writer's schema is fixed once it is open, so :class:`QuarantineWriter` keeps a value that does
not fit the file's schema by widening the schema and rewriting the rows written so far under it
(:meth:`QuarantineWriter.write_table`): a null-type column takes the new type; a column whose
new values do not cast to its type without loss (``7.25`` into int64, ``"oops"`` into float64),
or whose new values are text while the file's are not (text is not parsed: its spelling is
the value), becomes a string column, every earlier value written as its text (a nested value
as JSON); a new column is added before the ``_file`` ... ``_raw`` columns, null for the earlier
rows. No value is ever replaced by a null. String is the widest type, so each column widens at
most twice (null, then string) and the rewrites are few; they read the file back a batch at a
time.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from conveyor.ingest.errors import IngestError

log = logging.getLogger("conveyor.ingest")
# The quarantine file's schema metadata key holding its metadata columns' names (JSON list).
META_KEY = "conveyor.quarantine.meta"

META_FIELDS = [
    pa.field("_file", pa.string()),
    pa.field("_row", pa.int64()),
    pa.field("_rule", pa.string()),
    pa.field("_column", pa.string()),
    pa.field("_value", pa.string()),
    pa.field("_reason", pa.string()),
    pa.field("_raw", pa.string()),
]


def local_output(path: str | Path, what: str) -> Path:
    """``path`` as a local path. Outputs (the quarantine, reports) are written to local disk
    only: a URI (``s3://...``) is an :class:`IngestError` naming ``what`` (e.g. ``"--out"``),
    not a local directory named ``s3:``."""
    if "://" in str(path):
        raise IngestError(f"{what} {path}: a URI; outputs are written to a local path only")
    return Path(path)


def meta_names(columns: Iterable[str]) -> list[str]:
    """The names of the :data:`META_FIELDS` columns beside rows with ``columns``: their own,
    each with one more leading underscore while any of them is one of ``columns``."""
    taken, prefix = set(columns), ""
    while any(prefix + f.name in taken for f in META_FIELDS):
        prefix += "_"
    return [prefix + f.name for f in META_FIELDS]


def quarantine_table(
    data: pa.Table, meta: dict[str, list], columns: Iterable[str] = ()
) -> pa.Table:
    """``data`` (the rows, unchanged) with the per-row ``meta`` lists (keyed by the
    :data:`META_FIELDS` names) appended as the metadata columns (absent ones null), named by
    :func:`meta_names` over ``data``'s columns and ``columns`` (the source's, so that every
    table of a file names them alike)."""
    n = data.num_rows
    arrays = list(data.columns)
    fields = list(data.schema)
    chosen = meta_names([*data.column_names, *columns])
    for f, name in zip(META_FIELDS, chosen, strict=True):
        arrays.append(pa.array(meta.get(f.name, [None] * n), type=f.type))
        fields.append(f.with_name(name))
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(chosen)})
    return pa.Table.from_arrays(arrays, schema=schema)


class QuarantineWriter:
    """Appends quarantined rows to ``path`` (zstd Parquet); the file exists only once a row was
    written. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = local_output(path, "quarantine")
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, data: pa.Table, meta: dict[str, list]) -> None:
        """Write ``data`` (the rows, unchanged) with the per-row ``meta`` lists (see module doc)."""
        if data.num_rows:
            self.write_table(quarantine_table(data, meta))

    def write_table(self, table: pa.Table) -> None:
        """Write rows already built by :func:`quarantine_table`. The first write sets the file's
        schema; a later table is cast to it, or, where one of its values would not survive the
        cast, the schema is widened and the rows written so far are rewritten (module doc)."""
        if table.num_rows == 0:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._schema = table.schema
            names = table.column_names[-len(META_FIELDS) :]
            if names != [f.name for f in META_FIELDS]:
                log.warning(
                    "%s: the data has a column named like a metadata column; the metadata "
                    "columns are named %s ... %s",
                    self.path,
                    names[0],
                    names[-1],
                )
            self._writer = pq.ParquetWriter(self.path, self._schema, compression="zstd")
        else:
            assert self._schema is not None
            table = _conform(table, self._schema)
            if not table.schema.equals(self._schema):
                self._widen(table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def _widen(self, schema: pa.Schema) -> None:
        """Rewrite the rows written so far under ``schema`` (wider than the file's: every
        earlier value casts to it) and go on writing under it."""
        assert self._writer is not None
        self._writer.close()
        earlier = self.path.with_name(self.path.name + ".widening")
        os.replace(self.path, earlier)
        self._schema = schema
        self._writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        with pq.ParquetFile(earlier) as old:
            for batch in old.iter_batches():
                self._writer.write_table(_conform(pa.Table.from_batches([batch]), schema))
        earlier.unlink()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> QuarantineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in the file's ``schema``: absent columns as nulls, types cast. Where a value
    would not survive that, the result's schema is wider than ``schema`` (see the module doc):
    the caller rewrites the file under it. Never a null in place of a value. New columns go
    before the metadata columns (named in the schema's metadata, else :data:`META_FIELDS`)."""
    named = (schema.metadata or {}).get(META_KEY.encode())
    meta = set(json.loads(named)) if named else {f.name for f in META_FIELDS}
    fields: list[pa.Field] = []
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for f in schema:
        if f.name in table.column_names:
            col, typ = _fit(table.column(f.name), f.type)
            fields.append(f if typ.equals(f.type) else f.with_type(typ))
            arrays.append(col)
        else:
            fields.append(f)
            arrays.append(pa.nulls(table.num_rows, f.type))
    known = set(schema.names)
    at = next((i for i, f in enumerate(fields) if f.name in meta), len(fields))
    for name in [c for c in table.column_names if c not in known]:
        fields.insert(at, table.schema.field(name))
        arrays.insert(at, table.column(name))
        at += 1
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def _fit(col: pa.ChunkedArray, typ: pa.DataType) -> tuple[pa.ChunkedArray | pa.Array, pa.DataType]:
    """``col`` as the file's type ``typ`` when every value survives the cast, else ``col`` and
    the type the file's column must widen to (``col``'s own type over a null column, else
    string)."""
    if col.type.equals(typ):
        return col, typ
    if pa.types.is_null(typ):
        return col, col.type
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), typ), typ
    # Text cast into a number or date would lose its spelling ("007", "1e3"): keep it as text.
    if not _is_text(col.type) or _is_text(typ):
        try:
            cast = col.cast(typ)  # a safe cast: it fails rather than truncate or wrap ints
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        else:
            # ...but it rounds float64 into float32, makes 2 a True and drops struct
            # fields: only a cast that casts back to the same values is kept.
            if _round_trips(col, cast):
                return cast, typ
    return _as_text(col), pa.string()


def _round_trips(col: pa.ChunkedArray, cast: pa.ChunkedArray) -> bool:
    try:
        back = cast.cast(col.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    if back.null_count != col.null_count:
        return False
    try:
        same = pc.equal(back, col)
        if pa.types.is_floating(col.type):  # NaN is not equal to itself
            same = pc.or_(same, pc.and_(pc.is_nan(back), pc.is_nan(col)))
        return pc.all(same).as_py() in (True, None)  # None: every value is null
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return back.equals(col)  # nested types have no element-wise compare


def _is_text(typ: pa.DataType) -> bool:
    return (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_string_view(typ)
        or (pa.types.is_dictionary(typ) and _is_text(typ.value_type))
    )


def _as_text(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """Every value of ``col`` as a string; nested values (no Arrow cast to string) as JSON."""
    try:
        return col.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        values = col.to_pylist()  # per-row Python, only for such columns
        return pa.array(
            [None if v is None else json.dumps(v, default=str) for v in values], pa.string()
        )
