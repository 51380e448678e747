"""The quarantine file: rows that failed validation, unchanged, with why.

A Parquet file whose columns are the rows' own columns as read (for CSV the original text, for
the other formats the original typed values) followed by:

``_file`` (string), ``_row`` (int64, 0-based row within ``_file``; -1 if unknown), ``_rule``
(the first rule the row broke), ``_column``, ``_value`` (the offending value as a string),
``_reason`` (a sentence) and ``_raw`` (the original line for rows that could not be split
into columns, such as a ragged CSV row; null otherwise; their column values are null).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conveyor.ingest.errors import IngestError

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


def quarantine_table(data: pa.Table, meta: dict[str, list]) -> pa.Table:
    """``data`` (the rows, unchanged) with the per-row ``meta`` lists appended as the
    :data:`META_FIELDS` columns (absent ones null)."""
    n = data.num_rows
    columns = list(data.columns)
    names = list(data.column_names)
    for f in META_FIELDS:
        columns.append(pa.array(meta.get(f.name, [None] * n), type=f.type))
        names.append(f.name)
    return pa.Table.from_arrays(columns, names=names)


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
        """Write rows already built by :func:`quarantine_table`; the first write fixes the file's
        schema and later tables are conformed to it."""
        if table.num_rows == 0:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self.path, self._schema, compression="zstd")
        else:
            table = _conform(table, self._schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> QuarantineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Match the file's schema: absent columns as nulls; types cast (to string if need be)."""
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                col = pa.nulls(table.num_rows, f.type)
            arrays.append(col)
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
