"""Dataset discovery and scanning: one code path for files, directories, globs and URIs.

A source string is resolved through :func:`pyarrow.fs.FileSystem.from_uri` when it has a scheme
(``s3://``, ``gs://``, ``file://`` ...) and as a local path otherwise, so remote stores go
through exactly the code that the local tests exercise. A directory is listed recursively
(names starting with ``.`` or ``_`` are skipped, as pyarrow does), hive partitions
(``year=2024/``) become columns, and a glob (``data/*/part-*.parquet``) is matched against the
paths under its fixed prefix.

Every file's schema is read up front: a corrupt, truncated or empty file, or a file whose
columns or types contradict the first file's, is a :class:`SourceError` naming it (the
dataset-level ``schema`` rule, always ``reject``), never a crash mid-stream or a silent
null-filled column.

Reading is split into :class:`Piece` s (a Parquet row group, or a whole file for the other
formats); each yields :class:`Chunk` s of typed Arrow record batches. Projection (``columns``)
and filters (a :class:`pyarrow.dataset.Expression`) are pushed into pyarrow's scanner for Parquet
and IPC (row-group statistics skip data). Text formats have no types until parsed, so CSV is read
as raw strings and cast here, vectorised; values that do not parse are reported per row in
:attr:`Chunk.parse_errors` (the row-level ``type`` rule) instead of failing the whole file, the
filter is applied right after the cast, and rows with the wrong number of fields are reported in
:attr:`Chunk.bad_lines`. JSON lines go through pyarrow's reader; a file it rejects (mixed types,
a broken line) is re-read line by line so that only the bad rows are reported.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.json as pajson

from conveyor.ingest import csv_rows
from conveyor.ingest.errors import FormatError, SourceError
from conveyor.ingest.formats import FORMATS
from conveyor.ingest.split import SplitConfig

_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".arrow": "ipc",
    ".feather": "ipc",
    ".ipc": "ipc",
}
# Strings read as null in CSV. "NaN"/"inf" are deliberately absent: they parse as floats so
# that the NaN/inf rule sees them rather than the null rule.
CSV_NULLS = ["", "NULL", "null", "NA", "N/A", "None"]
DEFAULT_BATCH_ROWS = 65_536
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Piece:
    """A unit of reading and of shuffling: a Parquet row group, or a whole file otherwise.

    ``row_offset`` is the index of the piece's first row within its file; ``num_rows`` the
    rows it holds before any filter (None until counted for text formats).
    """

    file_index: int
    path: str
    row_group: int | None
    row_offset: int
    num_rows: int | None


@dataclass
class BadLine:
    """A text row that could not be split into the file's columns (ragged CSV, broken JSON)."""

    row: int  # 0-based data row index within the file (header excluded); -1 when unknown
    text: str
    reason: str


@dataclass
class Chunk:
    """Typed rows read from one file.

    ``rows`` (0-based row index within the file per row of ``batch``, with or without a
    filter), ``raw`` (the same rows as read, as strings, for text formats: what the
    quarantine keeps, unchanged) and ``parse_errors`` (column -> boolean mask over the batch of
    values that did not parse as the column's type; such values are null in ``batch``).
    ``late_columns``: JSON keys the file's inferred columns lack (they first appear past the
    MiB its columns were inferred from), each with the file row that first holds one (-1 when
    unknown); their values are not read, and the dataset-level ``extra_column`` rule decides.
    """

    path: str
    batch: pa.RecordBatch
    rows: np.ndarray
    raw: pa.RecordBatch | None = None
    parse_errors: dict[str, np.ndarray] = field(default_factory=dict)
    bad_lines: list[BadLine] = field(default_factory=list)
    late_columns: dict[str, int] = field(default_factory=dict)


def _split_query(source: str) -> tuple[str, str]:
    """``(location, query)``: a URI's query (``?endpoint_override=...&scheme=http``, with its
    ``?``; "" when none) holds filesystem options, so its ``?`` and ``[`` are not glob
    characters and it is not part of any file's path. A local path has no query."""
    if "://" not in source:
        return source, ""
    location, sep, query = source.partition("?")
    return location, sep + query


def _split_glob(source: str) -> tuple[str, str | None]:
    """``(fixed prefix, pattern relative to it)``: the prefix is the directories before the
    first segment holding a glob character ("" for a relative pattern with none: the working
    directory, or a given filesystem's root); the pattern is None without a glob character."""
    match = _GLOB_CHARS.search(source)
    if match is None:
        return source, None
    cut = source.rfind("/", 0, match.start())
    if cut < 0:
        return "", source
    return (source[:cut] or "/"), source[cut + 1 :]


def _glob_matches(rel: str, pattern: str) -> str | None:
    """How a file at ``rel`` matches a glob, with shell semantics: ``*``, ``?`` and ``[...]``
    match within one path segment, so ``g/*.parquet`` does not take ``g/archive/jan.parquet``
    (fnmatch's ``*`` crosses ``/``). ``"file"``: the pattern names the file itself;
    ``"directory"``: it names a directory the file is under (``events/date=*`` for hive
    partitions), read as a directory source is; None: no match."""
    parts, globs = rel.split("/"), pattern.strip("/").split("/")
    if len(parts) < len(globs) or not all(
        fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts, globs, strict=False)
    ):
        return None
    return "file" if len(parts) == len(globs) else "directory"


def resolve_filesystem(
    source: str, filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path for a source string (URI or local path)."""
    if filesystem is not None:
        return filesystem, source
    if "://" in source:
        try:
            return pafs.FileSystem.from_uri(source)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise SourceError(source, f"cannot open filesystem: {exc}") from None
    return pafs.LocalFileSystem(), os.path.abspath(source)


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/") if part)


_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
# How a Python caller gives a format the file names do not tell.
FORMAT_HINT = "pass format= (one of 'parquet', 'csv', 'json', 'ipc')"


def _format_of(path: str) -> str | None:
    lower = path.lower()
    for compressed in _COMPRESSED:
        if lower.endswith(compressed):
            lower = lower[: -len(compressed)]
    return _EXTENSIONS.get(posixpath.splitext(lower)[1])


def format_from_names(source: str, files: Sequence[str]) -> str:
    """The one format the extensions of ``files`` name.

    Raises :class:`FormatError` naming the first file whose extension names none, and
    :class:`SourceError` when the files are of more than one format.
    """
    first_of: dict[str, str] = {}
    for path in files:
        kind = _format_of(path)
        if kind is None:
            ext = posixpath.splitext(posixpath.basename(path))[1]
            known = ", ".join(_EXTENSIONS)
            said = f"the extension {ext!r}" if ext else "a name with no extension"
            raise FormatError(
                path,
                f"cannot tell the format from {said} (known: {known}, each optionally "
                f"compressed as {'/'.join(_COMPRESSED)})",
                FORMAT_HINT,
            )
        first_of.setdefault(kind, path)
    if len(first_of) > 1:
        found = ", ".join(f"{path} is {kind}" for kind, path in first_of.items())
        raise SourceError(source, f"files of more than one format ({found}); read each as a source")
    return next(iter(first_of))


def discover(
    source: str, filesystem: pafs.FileSystem | None = None, format: str | None = None
) -> tuple[pafs.FileSystem, str, list[str]]:
    """List a source's data files: ``(filesystem, base directory, sorted file paths)``.

    A directory's data files are those whose extension names a format; with ``format`` given,
    also those whose extension names none (Hadoop's ``part-00000``), but not another's."""
    location, query = _split_query(source) if filesystem is None else (source, "")
    base, glob_rel = _split_glob(location)
    fs, base_path = resolve_filesystem(base + query, filesystem)
    base_path = base_path.rstrip("/") or "/"
    # A remote store that cannot be reached or refuses the credentials raises OSError here.
    try:
        if glob_rel is not None:
            # A path that exists is read as named, `[` and all (`runs/run[1]/`): a glob only
            # when it is not one.
            literal = posixpath.join(base_path, glob_rel)
            if fs.get_file_info(literal).type != pafs.FileType.NotFound:
                base_path, glob_rel = literal, None
        info = fs.get_file_info(base_path)
        if info.type == pafs.FileType.NotFound:
            raise SourceError(source, "not found")
        if info.type == pafs.FileType.File:
            if glob_rel is not None:
                raise SourceError(source, "glob prefix is a file")
            return fs, posixpath.dirname(base_path), [base_path]
        infos = fs.get_file_info(pafs.FileSelector(base_path, recursive=True))
    except OSError as exc:
        raise SourceError(source, f"cannot list: {exc}") from None
    files, nameless = [], []
    # Some filesystems list "/bucket/key" under "bucket/": compare without leading slashes.
    root = base_path.strip("/")
    for entry in infos:
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path.strip("/")[len(root) :].lstrip("/")
        if _hidden(rel):
            continue
        matched = None if glob_rel is None else _glob_matches(rel, glob_rel)
        if glob_rel is not None and matched is None:
            continue
        if matched != "file" and _format_of(rel) not in ({None, format} if format else FORMATS):
            if _format_of(rel) is None:
                nameless.append(rel)
            continue
        files.append(entry.path)
    if not files and nameless:
        raise FormatError(
            source,
            f"no data files found: no name tells a format ({len(nameless)} files, e.g. "
            f"{min(nameless)!r})",
            FORMAT_HINT,
        )
    if not files:
        raise SourceError(source, "no data files found")
    return fs, base_path, sorted(files)


def _partition_type(values: list[str]) -> pa.DataType:
    """A hive key's type from its directory values: int32 when every value is an integer that
    fits it (pyarrow's own inference), int64 when one needs it (``id=12345678901``, ns
    timestamps), string otherwise (non-integers, or an integer beyond int64)."""
    if not all(re.fullmatch(r"[+-]?\d+", v) for v in values):
        return pa.string()
    least, most = min(int(v) for v in values), max(int(v) for v in values)
    for typ, info in ((pa.int32(), np.iinfo(np.int32)), (pa.int64(), np.iinfo(np.int64))):
        if info.min <= least and most <= info.max:
            return typ
    return pa.string()


def _fill_null_types(schemas: list[pa.Schema]) -> tuple[pa.Schema, dict[str, int]]:
    """The first schema, each of its null-typed columns given the type of the first schema that
    has the column with another type (still null when none has: the data has no value of it);
    with ``{column: index of the schema its type came from}`` for the columns filled so."""
    ref, typed_by = schemas[0], {}
    for i, f in enumerate(ref):
        if not pa.types.is_null(f.type):
            continue
        for k, schema in enumerate(schemas[1:], start=1):
            j = schema.get_field_index(f.name)
            if j >= 0 and not pa.types.is_null(schema.field(j).type):
                ref = ref.set(i, f.with_type(schema.field(j).type))
                typed_by[f.name] = k
                break
    return ref, typed_by


def _plain(t: pa.DataType) -> pa.DataType:
    """The values ``t`` holds, whatever their encoding: a dictionary's value type (pandas writes a
    ``category`` column with int8 or int16 indices by its number of categories), and
    ``large_string``/``large_binary`` (64-bit offsets) as ``string``/``binary``."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t


def _common_type(types: list[pa.DataType]) -> pa.DataType:
    """One type that reads every one of ``types`` (all with the same :func:`_plain` values):
    a dictionary with int32 indices when all are dictionaries, else the plain value type; the
    large variant when one is large, as it holds the others' values."""
    values = [t.value_type if pa.types.is_dictionary(t) else t for t in types]
    value = next((v for v in values if v != _plain(v)), values[0])
    if all(pa.types.is_dictionary(t) for t in types):
        return pa.dictionary(pa.int32(), value)
    return value


def _common_encodings(ref: pa.Schema, schemas: list[pa.Schema]) -> pa.Schema:
    """``ref`` with each column whose files hold the same values in other encodings (see
    :func:`_plain`) given one type for all (:func:`_common_type`), which pyarrow's scan casts
    every file to; a column whose values differ is left for the ``schema`` rule to name."""
    for i, f in enumerate(ref):
        types = [s.field(f.name).type for s in schemas if f.name in s.names]
        types = [t for t in types if not pa.types.is_null(t)]
        if not types or all(t.equals(types[0]) for t in types):
            continue
        if all(_plain(t).equals(_plain(types[0])) for t in types):
            ref = ref.set(i, f.with_type(_common_type(types)))
    return ref


def _file_format(fmt: str, csv_delimiter: str = ",") -> ds.FileFormat:
    if fmt == "parquet":
        return ds.ParquetFileFormat()
    if fmt == "ipc":
        return ds.IpcFileFormat()
    if fmt == "csv":
        return ds.CsvFileFormat(
            parse_options=pacsv.ParseOptions(delimiter=csv_delimiter),
            convert_options=pacsv.ConvertOptions(null_values=CSV_NULLS, strings_can_be_null=True),
        )
    return ds.JsonFileFormat()


class Source:
    """A readable dataset: files of one format, their common schema, and their pieces.

    Args:
        source: a file, a directory (hive partitions understood), a glob, or a URI
            (``s3://bucket/prefix/``) of Parquet, CSV, JSON lines or Arrow IPC/Feather files.
        format: one of :data:`FORMATS`; default: from the file extensions.
        filesystem: a pyarrow filesystem to use instead of resolving ``source``.
        batch_rows: rows per record batch when reading (default 65,536).
        csv_delimiter: the CSV field separator (default ``,``).
        types: declared column types (Arrow types or their names, e.g. ``"float64"``) for the
            text formats, CSV and JSON lines, used instead of inference from each file's first
            MiB: a value that does not parse as its declared type is then a per-row ``type``
            error, never a reason to read the whole column as strings. Parquet and IPC files
            carry their own types, so ``types`` does not apply to them.
    """

    def __init__(
        self,
        source: str,
        *,
        format: str | None = None,
        filesystem: pafs.FileSystem | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        csv_delimiter: str = ",",
        types: dict[str, str | pa.DataType] | None = None,
    ) -> None:
        self.uri = source
        self.batch_rows = batch_rows
        self.csv_delimiter = csv_delimiter
        if format is not None and format not in FORMATS:
            raise SourceError(source, f"unknown format {format!r} (choose from {FORMATS})")
        self.filesystem, self.base, self.files = discover(source, filesystem, format)
        if format is None:
            format = format_from_names(source, self.files)
        self.format: str = format
        self._ds_format = _file_format(format, csv_delimiter)
        inspected = [_unique_names(p, self._inspect(p)) for p in self.files]
        self.file_schemas = _borrow_json_schemas(self.files, inspected)
        if format in ("csv", "json"):
            named = [name for name, t in (types or {}).items() if t == "timestamp"]
            self.file_schemas = _common_timestamp_units(self.file_schemas, named)
            types = {name: t for name, t in (types or {}).items() if t != "timestamp"}
        if types and format in ("csv", "json"):
            self.file_schemas = [_declare(s, types) for s in self.file_schemas]
        # The columns' types: the first file's, but a column a file holds no value of (a
        # header-only CSV, an empty pandas partition's object column) is typed null there,
        # which says nothing about it: such a column takes the first type another file gives.
        self.file_schema, self._typed_by = _fill_null_types(self.file_schemas)
        if format in ("parquet", "ipc"):
            self.file_schema = _common_encodings(self.file_schema, self.file_schemas)
        # Columns each pushed-down filter names (see _filter_fields), by id(filter).
        self._filter_fields_cache: dict[int, tuple[ds.Expression, list[str]]] = {}
        self._check_schemas()
        part_schema = self._partition_schema()
        try:
            self.dataset = ds.dataset(
                self.files,
                filesystem=self.filesystem,
                format=self._ds_format,
                partitioning=ds.partitioning(part_schema, flavor="hive"),
                partition_base_dir=self.base,
                # Given, so that pyarrow does not re-inspect (and choke on a ragged first block).
                schema=pa.unify_schemas([self.file_schema, part_schema]),
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(source, f"cannot open dataset: {exc}") from None
        # The dataset schema is the files' (file_schema) plus the partition columns.
        self.schema: pa.Schema = self.dataset.schema
        self.partition_names = [n for n in self.schema.names if n not in self.file_schema.names]
        self._fragments = list(self.dataset.get_fragments())

    def where_column(self, column: str) -> tuple[str, int | None]:
        """Where ``column`` first appears, for an error about it: the first file holding it
        and, in JSON lines, the 0-based row whose object first has the key (else None: in
        a CSV header or a Parquet schema it belongs to no row). The source's URI when no
        file holds it (a partition column)."""
        for path, schema in zip(self.files, self.file_schemas, strict=True):
            if schema is None or column not in schema.names:
                continue
            if self.format != "json":
                return path, None
            try:
                with self.filesystem.open_input_stream(path, compression="detect") as fh:
                    for row, line in enumerate(io.TextIOWrapper(fh, encoding="utf-8")):
                        try:
                            obj = json.loads(line)
                        except ValueError:
                            continue
                        if isinstance(obj, dict) and column in obj:
                            return path, row
            except (OSError, UnicodeDecodeError):
                pass
            return path, None
        return self.uri, None

    # -- discovery ---------------------------------------------------------------------------
    def _inspect(self, path: str) -> pa.Schema | None:
        try:
            size = self.filesystem.get_file_info(path).size
        except OSError as exc:
            raise SourceError(path, f"cannot stat: {exc}") from None
        if size == 0:
            raise SourceError(path, "empty file (0 bytes)")
        try:
            if self.format == "json":
                with self.filesystem.open_input_stream(path, compression="detect") as fh:
                    head = fh.read(1 << 20)
                lines = head.split(b"\n")
                if len(head) == 1 << 20 and len(lines) > 1:
                    lines = lines[:-1]  # drop a line cut by the read limit
                try:
                    return pajson.read_json(io.BytesIO(b"\n".join(lines))).schema
                except pa.ArrowInvalid:
                    return _infer_json_schema(lines)
            if self.format == "csv":
                # Types are inferred from the first block; ragged rows are skipped here and
                # reported when the file is read. Single-threaded, as the read: only then
                # does pyarrow's error name the row (see csv_rows).
                csv_rows.install()
                with self.filesystem.open_input_stream(path, compression="detect") as fh:
                    reader = pacsv.open_csv(
                        fh,
                        read_options=pacsv.ReadOptions(use_threads=False),
                        parse_options=pacsv.ParseOptions(
                            delimiter=self.csv_delimiter, invalid_row_handler=lambda _: "skip"
                        ),
                        convert_options=pacsv.ConvertOptions(
                            null_values=CSV_NULLS, strings_can_be_null=True
                        ),
                    )
                    return _text_schema(reader.schema, path)
            return self._ds_format.inspect(path, filesystem=self.filesystem)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            detail = csv_rows.undecodable_row(exc) if self.format == "csv" else None
            if detail is not None:
                raise SourceError(path, detail) from None
            raise SourceError(path, f"corrupt or unreadable {self.format} file: {exc}") from None

    def _partition_schema(self) -> pa.Schema:
        """Hive keys (``key=value`` directories) as columns, typed by :func:`_partition_type`
        (done here so it costs no I/O)."""
        values: dict[str, list[str]] = {}
        for path in self.files:
            rel = path[len(self.base) :].strip("/").split("/")[:-1]
            for part in rel:
                if "=" in part:
                    key, _, value = part.partition("=")
                    values.setdefault(key, []).append(value)
        fields = []
        for key, vals in values.items():
            if key in self.file_schema.names:
                continue  # a file column wins over a same-named directory key
            fields.append(pa.field(key, _partition_type(vals)))
        return pa.schema(fields)

    def _check_schemas(self) -> None:
        """The dataset-level ``schema`` rule: every file has the first file's columns (and, for
        binary formats, types, compared by the values they hold, :func:`_plain`; a column of
        type null in a file matches any: it has no values to contradict them). Text formats are
        compared by column names only: their types are inferred per file and a value that does
        not parse is a row-level problem."""
        ref_path, ref = self.files[0], self.file_schema
        for path, schema in zip(self.files[1:], self.file_schemas[1:], strict=True):
            missing = [n for n in ref.names if n not in schema.names]
            extra = [n for n in schema.names if n not in ref.names]
            problems = []
            if missing:
                problems.append(f"missing columns {missing}")
            if extra:
                problems.append(f"extra columns {extra}")
            if self.format in ("parquet", "ipc"):
                for f in ref:
                    got = schema.field(f.name).type if f.name in schema.names else None
                    if got is None or pa.types.is_null(got):
                        continue
                    if not _plain(got).equals(_plain(f.type)):
                        where = self._typed_by.get(f.name)
                        typed_in = "" if where is None else f" (as in {self.files[where]})"
                        problems.append(f"column {f.name!r} is {got}, not {f.type}{typed_in}")
            if problems:
                raise SourceError(path, f"schema differs from {ref_path}: " + "; ".join(problems))

    # -- pieces ------------------------------------------------------------------------------
    def pieces(self) -> list[Piece]:
        """All pieces in file order; Parquet files are split into row groups."""
        out = []
        for i, frag in enumerate(self._fragments):
            if self.format == "parquet":
                offset = 0
                try:  # the footer may be read only now, after the file changed
                    row_groups = frag.row_groups
                except (pa.ArrowInvalid, OSError) as exc:
                    raise SourceError(
                        frag.path, f"corrupt or truncated parquet file: {exc}"
                    ) from None
                for rg in row_groups:
                    out.append(Piece(i, frag.path, rg.id, offset, rg.num_rows))
                    offset += rg.num_rows
            elif self.format == "ipc":
                out.append(Piece(i, frag.path, None, 0, self._count_ipc(frag)))
            else:
                out.append(Piece(i, frag.path, None, 0, None))
        return out

    def _count_ipc(self, frag: ds.Fragment) -> int:
        try:
            return frag.count_rows()
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(frag.path, f"corrupt or truncated ipc file: {exc}") from None

    def count_rows(
        self,
        piece: Piece,
        filter: ds.Expression | None = None,
        split: SplitConfig | None = None,
    ) -> int:
        """Rows a piece yields under ``filter`` and ``split``: from metadata (Parquet, IPC)
        without a filter, with the split's hash over the row indices and no read; otherwise a
        counting pass."""
        if filter is None and piece.num_rows is not None:
            if split is None:
                return piece.num_rows
            rows = np.arange(piece.row_offset, piece.row_offset + piece.num_rows, dtype=np.int64)
            return int(split.keep(self.relative_path(piece.path), rows).sum())
        return sum(len(c.rows) for c in self.read(piece, columns=[], filter=filter, split=split))

    def relative_path(self, path: str) -> str:
        """``path`` relative to the source's root (the directory, or a glob's fixed prefix, or
        a single file's directory): what the split hashes, so it does not depend on where the
        dataset is mounted."""
        return path[len(self.base) :].lstrip("/") if path.startswith(self.base) else path

    # -- reading -----------------------------------------------------------------------------
    def read(
        self,
        piece: Piece,
        columns: Sequence[str] | None = None,
        filter: ds.Expression | None = None,
        split: SplitConfig | None = None,
    ) -> Iterator[Chunk]:
        """Yield the typed rows of ``piece`` (projection ``columns``, default all; ``filter``;
        ``split``: only the rows of that part, see :mod:`conveyor.ingest.split`). With a split,
        rows and unsplittable lines are assigned by their index within the file, so a split
        commutes with a filter."""
        cols = list(self.schema.names) if columns is None else list(columns)
        unknown = [c for c in cols if c not in self.schema.names]
        if unknown:
            raise SourceError(piece.path, f"no such columns {unknown}")
        rel = self.relative_path(piece.path)
        if filter is not None and self.format in ("parquet", "ipc") and (cols or split):
            # A pushed-down filter renumbers binary rows among those that pass, yet rows are
            # named (errors, the quarantine) and split by their index in the file: read the
            # projection and what the filter names unfiltered, then split and filter here.
            # The same columns are decoded either way: a row-level predicate (a key's hash
            # bucket) prunes no row group. A counting pass (no columns, no split) names no
            # row, so it keeps the pushed-down filter.
            fields = [c for c in self._filter_fields(filter) if c not in cols]
            for chunk in self._read(piece, [*cols, *fields], None):
                if split is not None:
                    chunk = _mask_chunk(chunk, split.keep(rel, chunk.rows), split, rel)
                keep = _evaluate(chunk.batch, filter).to_numpy(zero_copy_only=False)
                chunk = _mask_chunk(chunk, keep, None, rel)
                yield replace(chunk, batch=chunk.batch.select(cols))
            return
        if split is None:
            yield from self._read(piece, cols, filter)
            return
        for chunk in self._read(piece, cols, filter):
            yield _mask_chunk(chunk, split.keep(rel, chunk.rows), split, rel)

    def _filter_fields(self, filter: ds.Expression) -> list[str]:
        """The columns ``filter`` names. pyarrow does not list an expression's fields, so they
        are found once per filter by elimination on empty tables: a column without which
        the filter cannot be evaluated is one of them (every column when the test fails)."""
        cached = self._filter_fields_cache.get(id(filter))
        if cached is not None and cached[0] is filter:  # the filter held: its id is its own
            return cached[1]
        names = list(self.schema.names)

        def evaluates(columns: list[str]) -> bool:
            empty = pa.table({c: pa.array([], self.schema.field(c).type) for c in columns})
            try:
                ds.dataset(empty).to_table(filter=filter)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                return False
            return True

        if evaluates(names):
            fields = [c for c in names if not evaluates([n for n in names if n != c])]
        else:
            fields = names
        self._filter_fields_cache[id(filter)] = (filter, fields)
        return fields

    def _read(self, piece: Piece, cols: list[str], filter: ds.Expression | None) -> Iterator[Chunk]:
        frag = self._fragments[piece.file_index]
        try:
            if self.format in ("parquet", "ipc"):
                yield from self._read_binary(frag, piece, cols, filter)
            elif self.format == "csv":
                yield from self._read_csv(frag, piece, cols, filter)
            else:
                yield from self._read_json(frag, piece, cols, filter)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            detail = csv_rows.undecodable_row(exc) if self.format == "csv" else None
            raise SourceError(
                piece.path, detail or f"corrupt or truncated {self.format} file: {exc}"
            ) from None

    def _read_binary(self, frag, piece: Piece, cols, filter) -> Iterator[Chunk]:
        if piece.row_group is not None:
            # A row group is decoded whole anyway; to_table lets pyarrow decode its columns in
            # parallel (about 15% faster than to_batches here), then it is cut without copying.
            table = frag.subset(row_group_ids=[piece.row_group]).to_table(
                schema=self.schema, columns=cols, filter=filter
            )
            batches = table.to_batches(max_chunksize=self.batch_rows)
        else:
            batches = frag.to_batches(
                schema=self.schema, columns=cols, filter=filter, batch_size=self.batch_rows
            )
        row = piece.row_offset
        for batch in batches:
            n = batch.num_rows
            yield Chunk(piece.path, batch, np.arange(row, row + n, dtype=np.int64))
            row += n

    def _partition_values(self, frag) -> dict[str, pa.Scalar]:
        keys = ds.get_partition_keys(frag.partition_expression)
        return {k: pa.scalar(v, self.schema.field(k).type) for k, v in keys.items()}

    def _finish(
        self,
        frag,
        typed: dict[str, pa.Array],
        raw: dict[str, pa.Array] | None,
        rows: np.ndarray,
        errors: dict[str, np.ndarray],
        bad: list[BadLine],
        cols: list[str],
        filter,
        path: str,
    ) -> Chunk:
        n = len(rows)
        parts = self._partition_values(frag)
        for name, value in parts.items():
            typed[name] = pa.array([value.as_py()] * n, type=value.type)
            if raw is not None:
                raw[name] = pa.array([str(value.as_py())] * n, type=pa.string())
        needed = list(cols)
        if filter is not None:
            needed += [n_ for n_ in typed if n_ not in needed]
        batch = pa.RecordBatch.from_arrays([typed[c] for c in needed], names=needed)
        if not needed:  # keep the row count: a batch built from no columns has 0 rows
            batch = pa.RecordBatch.from_arrays([pa.nulls(n)], names=["_"]).select([])
        # No projected column (a counting pass), no raw batch: one of 0 columns has 0 rows,
        # which the filter below could not apply to.
        raw_batch = (
            pa.RecordBatch.from_arrays([raw[c] for c in cols], names=cols)
            if raw is not None and cols
            else None
        )
        errors = {c: m for c, m in errors.items() if c in cols and m.any()}
        if filter is not None:
            keep = _evaluate(batch, filter)
            mask = keep.to_numpy(zero_copy_only=False)
            batch = batch.filter(keep).select(cols)
            raw_batch = raw_batch.filter(keep) if raw_batch is not None else None
            rows = rows[mask]
            errors = {c: m[mask] for c, m in errors.items()}
        return Chunk(path, batch, rows, raw_batch, errors, bad)

    def _read_csv(self, frag, piece: Piece, cols, filter) -> Iterator[Chunk]:
        file_schema = self.file_schemas[piece.file_index]
        bad: list[BadLine] = []

        def on_bad(row) -> str:
            # `number` is the 1-based physical line (header included) when known.
            idx = row.number - 2 if row.number is not None and row.number >= 2 else -1
            reason = f"expected {row.expected_columns} fields, got {row.actual_columns}"
            bad.append(BadLine(idx, row.text, reason))
            return "skip"

        read_cols = [c for c in file_schema.names if c in cols or filter is not None]
        csv_rows.install()
        stream = self.filesystem.open_input_stream(piece.path, compression="detect")
        reader = pacsv.open_csv(
            stream,
            # Single-threaded: only then does the parser report ragged rows' line numbers.
            read_options=pacsv.ReadOptions(block_size=1 << 22, use_threads=False),
            parse_options=pacsv.ParseOptions(
                delimiter=self.csv_delimiter, invalid_row_handler=on_bad
            ),
            convert_options=pacsv.ConvertOptions(
                # Bytes, checked here: a value that is not UTF-8 is its row's `type` error,
                # where pyarrow's string reader fails the whole file.
                column_types={c: pa.binary() for c in file_schema.names},
                include_columns=read_cols or None,
                null_values=CSV_NULLS,
                strings_can_be_null=True,
            ),
        )
        ref_types = {f.name: f.type for f in self.schema}
        row = 0
        with stream:
            for batch in reader:
                n = batch.num_rows
                # Ragged rows are skipped by the parser, possibly ahead of this batch (read-ahead):
                # this batch's rows are the first n file positions from `row` that are not bad.
                known = np.array(sorted(b.row for b in bad if b.row >= row), dtype=np.int64)
                end = row + n
                while True:
                    grown = row + n + int(np.count_nonzero(known < end))
                    if grown == end:
                        break
                    end = grown
                rows = np.setdiff1d(np.arange(row, end, dtype=np.int64), known)
                mine = [b for b in bad if b.row < end]
                bad[:] = [b for b in bad if b.row >= end]
                typed, errors, raw = {}, {}, {}
                for name in read_cols:
                    raw[name], invalid = _utf8(batch.column(name))
                    typed[name], errors[name] = cast_text(raw[name], ref_types[name])
                    if invalid is not None:
                        typed[name] = pc.if_else(
                            invalid, pa.scalar(None, ref_types[name]), typed[name]
                        )
                        errors[name] = errors[name] | invalid
                yield self._finish(frag, typed, raw, rows, errors, mine, cols, filter, piece.path)
                row = end
            if bad:  # ragged rows after the last batch
                empty = {c: pa.array([], type=pa.string()) for c in read_cols}
                typed = {c: pa.array([], type=ref_types[c]) for c in read_cols}
                yield self._finish(
                    frag,
                    typed,
                    empty,
                    np.zeros(0, np.int64),
                    {},
                    list(bad),
                    cols,
                    filter,
                    piece.path,
                )

    def _read_json(self, frag, piece: Piece, cols, filter) -> Iterator[Chunk]:
        ref_types = {f.name: f.type for f in self.schema}
        file_cols = self.file_schemas[piece.file_index].names
        with self.filesystem.open_input_stream(piece.path, compression="detect") as fh:
            data = fh.read()
        explicit = pa.schema([(c, ref_types[c]) for c in file_cols])
        try:
            # "infer": a key beyond the inferred columns becomes a column of its own, so
            # that it can be named with the row that first holds it (then dropped).
            table = pajson.read_json(
                io.BytesIO(data),
                parse_options=pajson.ParseOptions(
                    explicit_schema=explicit, unexpected_field_behavior="infer"
                ),
            )
        except pa.ArrowInvalid:
            yield from self._read_json_lines(frag, piece, data, cols, filter)
            return
        late = {c: _first_valid(table.column(c)) for c in table.column_names if c not in file_cols}
        row = 0
        for batch in table.to_batches(max_chunksize=self.batch_rows):
            n = batch.num_rows
            typed = {c: batch.column(c) for c in file_cols}
            chunk = self._finish(
                frag,
                typed,
                None,
                np.arange(row, row + n, dtype=np.int64),
                {},
                [],
                cols,
                filter,
                piece.path,
            )
            yield replace(chunk, late_columns=late) if late and row == 0 else chunk
            row += n

    def _read_json_lines(self, frag, piece: Piece, data: bytes, cols, filter) -> Iterator[Chunk]:
        """Slow path for a JSON file pyarrow rejects: parse line by line so that only the
        offending rows are reported (as bad lines or parse errors), the rest kept."""
        ref_types = {f.name: f.type for f in self.schema}
        file_cols = self.file_schemas[piece.file_index].names
        values: dict[str, list[str | None]] = {c: [] for c in file_cols}
        rows: list[int] = []
        bad: list[BadLine] = []
        late: dict[str, int] = {}
        index = 0
        for line in data.split(b"\n"):
            text = line.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                bad.append(BadLine(index, text, f"not a JSON object row: {exc}"))
                index += 1
                continue
            for k in obj:
                if k not in file_cols and k not in late:
                    late[k] = index
            for c in file_cols:
                v = obj.get(c)
                values[c].append(
                    None if v is None else (v if isinstance(v, str) else json.dumps(v))
                )
            rows.append(index)
            index += 1
        raw = {c: pa.array(values[c], type=pa.string()) for c in file_cols}
        typed, errors = {}, {}
        for c in file_cols:
            typed[c], errors[c] = cast_text(raw[c], ref_types[c])
        chunk = self._finish(
            frag,
            typed,
            raw,
            np.asarray(rows, dtype=np.int64),
            errors,
            bad,
            cols,
            filter,
            piece.path,
        )
        yield replace(chunk, late_columns=late) if late else chunk


def _text_schema(schema: pa.Schema, path: str) -> pa.Schema:
    """A CSV file's inferred schema, its names checked to be UTF-8 (pyarrow raises a bare
    UnicodeDecodeError at the first use of a Latin-1 header) and a column inferred as
    ``binary`` (a value that is not UTF-8 in the first block) read as text: each such value
    is its row's ``type`` error (:func:`_utf8`)."""
    try:
        schema.names  # noqa: B018 - decoded here, not at some later use
    except UnicodeDecodeError as exc:
        raise SourceError(
            path, f"the header is not UTF-8 text ({exc}); re-encode the file as UTF-8"
        ) from None
    return pa.schema(
        [f.with_type(pa.string()) if pa.types.is_binary(f.type) else f for f in schema],
        metadata=schema.metadata,
    )


def _utf8(values: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """CSV bytes as text: ``(strings, mask of the values that are not UTF-8, or None when
    all are)``. A value that is not keeps its text with U+FFFD for each bad byte, so that the
    quarantine shows it; decoding value by value is paid only by a batch that has one."""
    try:
        return values.cast(pa.string()), None
    except pa.ArrowInvalid:
        pass
    texts, invalid = [], np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values.to_pylist()):
        try:
            texts.append(None if value is None else value.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(value.decode("utf-8", errors="replace"))
            invalid[i] = True
    return pa.array(texts, type=pa.string()), invalid


def _first_valid(column: pa.ChunkedArray) -> int:
    """Index of the first non-null value of ``column``, -1 when all are null."""
    return int(pc.index(pc.is_valid(column), True).as_py())


def _mask_chunk(chunk: Chunk, keep: np.ndarray, split: SplitConfig | None, rel: str) -> Chunk:
    """The rows of ``chunk`` where ``keep``; with ``split``, its unsplittable lines are kept
    when their own file index is in the split's part (an unknown index, -1, hashes as -1)."""
    bad = chunk.bad_lines
    if split is not None and bad:
        bad_keep = split.keep(rel, np.array([b.row for b in bad], dtype=np.int64))
        bad = [b for b, k in zip(bad, bad_keep, strict=True) if k]
    if keep.all():
        return replace(chunk, bad_lines=bad) if bad is not chunk.bad_lines else chunk
    mask = pa.array(keep)
    return replace(
        chunk,
        batch=chunk.batch.filter(mask),
        rows=chunk.rows[keep],
        # A projection to no columns leaves a raw batch of 0 columns (and 0 rows): as is.
        raw=chunk.raw.filter(mask)
        if chunk.raw is not None and chunk.raw.num_columns
        else chunk.raw,
        parse_errors={c: m[keep] for c, m in chunk.parse_errors.items()},
        bad_lines=bad,
    )


def _common_timestamp_units(schemas: list[pa.Schema], named: Iterable[str] = ()) -> list[pa.Schema]:
    """Text timestamps read as one type for every file: microseconds, and UTC when any file's
    values carry a zone offset.

    Inference gives each file the unit its first MiB suggests (``timestamp[s]`` for
    ``10:00:00``, ``[ns]`` as soon as a fraction appears), and the first file's type is
    the column's: every row of a file (or a later block) with a fraction would then fail
    the ``type`` rule. Microseconds hold what text usually carries and every date from
    year 1 to 9999, where nanoseconds stop at 2262, short of the ``9999-12-31``
    sentinels warehouses write. A value with more than six fractional digits is a
    ``type`` error naming its row, never silently truncated. Likewise a zone: one file with
    ``...Z`` and one without would each fail the other's type (which file's rows were lost
    depended on the names' order), so a column zoned in any file is ``timestamp[us, UTC]`` in
    all, and a value without an offset is read as UTC (:func:`cast_text`).

    And a column that is a timestamp in any file, or ``named`` one (the spec's timestamp),
    is one in every file that reads it as text: a file whose sample held a value that does
    not parse was read as strings, so its bad values passed while the same values in a
    file typed by the others were ``type`` errors (which depended on the names' order)."""
    stamps = set(named)
    zoned = set()
    for schema in schemas:
        for f in schema:
            if pa.types.is_timestamp(f.type):
                stamps.add(f.name)
                if f.type.tz is not None:
                    zoned.add(f.name)

    def common(f: pa.Field) -> pa.Field:
        text = pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        if f.name not in stamps or not (
            text or pa.types.is_null(f.type) or pa.types.is_timestamp(f.type)
        ):
            return f
        return f.with_type(pa.timestamp("us", "UTC" if f.name in zoned else None))

    return [pa.schema([common(f) for f in schema], metadata=schema.metadata) for schema in schemas]


def _unique_names(path: str, schema: pa.Schema | None) -> pa.Schema | None:
    """``schema``, checked that no column name repeats: a column named twice cannot be told
    apart by name (pyarrow's own error names neither the file nor the column)."""
    if schema is not None:
        repeated = [name for name, k in Counter(schema.names).items() if k > 1]
        if repeated:
            raise SourceError(path, f"column names repeated: {repeated} (columns: {schema.names})")
    return schema


def _borrow_json_schemas(files: list[str], schemas: list[pa.Schema | None]) -> list[pa.Schema]:
    """A JSON file with no object row in its first MiB (every line broken) has no columns of
    its own: it takes the first other file's, so that its lines are quarantined as ``parse``
    errors one by one, as a CSV file's would be, instead of failing the whole source. With no
    other file to take them from, it is a :class:`SourceError` naming it."""
    typed = next((s for s in schemas if s is not None), None)
    if typed is None:
        raise SourceError(
            files[0], "corrupt or unreadable json file: no JSON object rows in the first MiB"
        )
    return [typed if s is None else s for s in schemas]


def _declare(schema: pa.Schema, types: dict[str, str | pa.DataType]) -> pa.Schema:
    """``schema`` with the declared ``types`` in place of the inferred ones."""
    fields = []
    for f in schema:
        declared = types.get(f.name)
        if isinstance(declared, str):
            declared = pa.type_for_alias(declared)
        fields.append(f.with_type(declared) if declared is not None else f)
    return pa.schema(fields)


def _infer_json_schema(lines: list[bytes]) -> pa.Schema | None:
    """Column types for JSON lines pyarrow will not read as a whole (mixed types, broken
    lines): per column, pyarrow's inference over the values, string where they disagree."""
    columns: dict[str, list] = {}
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            for key, value in obj.items():
                columns.setdefault(key, []).append(value)
    if not columns:
        return None  # nothing to type: see _borrow_json_schemas
    fields = []
    for key, values in columns.items():
        try:
            typ = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            typ = pa.string()
        fields.append(pa.field(key, pa.string() if pa.types.is_null(typ) else typ))
    return pa.schema(fields)


def _evaluate(batch: pa.RecordBatch, filter: ds.Expression) -> pa.Array:
    """Evaluate a dataset expression to a boolean mask over ``batch``."""
    # RecordBatch.filter takes the expression itself: ~0.25 ms a small batch, where a
    # one-batch dataset took ~0.4 (a Parquet row group per call while training).
    marked = batch.append_column("__row", pa.array(np.arange(batch.num_rows)))
    kept = marked.filter(filter).column("__row")
    mask = np.zeros(batch.num_rows, dtype=bool)
    mask[kept.to_numpy()] = True
    return pa.array(mask)


_PATTERNS = {
    "int": r"^\s*[+-]?\d+\s*$",
    "float": r"^\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)\s*$",
    "bool": r"^\s*(true|false|1|0)\s*$",
}


def cast_text(arr: pa.Array, typ: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast strings to ``typ`` vectorised: ``(typed, bad)`` where ``bad`` marks non-null input
    values that do not parse (they become null in ``typed``). The per-value Python fallback
    runs only for values that match the pattern and still fail (e.g. integer overflow)."""
    if pa.types.is_timestamp(typ) and typ.tz is not None:
        return _cast_zoned_text(arr, typ)
    return _cast_plain_text(arr, typ)


def _cast_plain_text(arr: pa.Array, typ: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """:func:`cast_text` as pyarrow casts (a zoned timestamp only from values with offsets)."""
    n = len(arr)
    no_errors = np.zeros(n, dtype=bool)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return arr.cast(typ), no_errors
    if pa.types.is_null(typ):
        typ = pa.string()
        return arr, no_errors
    try:
        return pc.cast(arr, typ), no_errors
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if pa.types.is_integer(typ):
        pattern = _PATTERNS["int"]
    elif pa.types.is_floating(typ):
        pattern = _PATTERNS["float"]
    elif pa.types.is_boolean(typ):
        pattern = _PATTERNS["bool"]
    else:
        pattern = None
    if pattern is not None:
        ok = pc.fill_null(pc.match_substring_regex(arr, pattern, ignore_case=True), False)
        candidate = pc.if_else(ok, pc.utf8_trim_whitespace(arr), pa.scalar(None, pa.string()))
        try:
            typed = pc.cast(candidate, typ)
            bad = pc.and_(pc.invert(ok), pc.is_valid(arr)).to_numpy(zero_copy_only=False)
            return typed, bad
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    out, bad = [], np.zeros(n, dtype=bool)
    for i, value in enumerate(arr.to_pylist()):
        if value is None:
            out.append(None)
            continue
        try:
            out.append(pc.cast(pa.array([value.strip()]), typ)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(None)
            bad[i] = True
    return pa.array(out, type=typ), bad


# A time of day followed by a zone offset (`Z`, `+02`, `-0530`, `+05:30`): a date's own
# `-03` is not one.
_ZONE_OFFSET = r"\d:\d\d(:\d\d(\.\d*)?)?\s*(z|[+-]\d\d(:?\d\d)?)\s*$"


def _cast_zoned_text(arr: pa.Array, typ: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """:func:`cast_text` to a zoned timestamp: values with an offset are converted by it, and
    values without one are read as wall-clock times in ``typ``'s zone (pyarrow refuses them;
    see :func:`_common_timestamp_units` for why a column mixes them)."""
    zoned = pc.fill_null(pc.match_substring_regex(arr, _ZONE_OFFSET, ignore_case=True), False)
    none = pa.scalar(None, arr.type)
    with_zone, bad_zoned = _cast_plain_text(pc.if_else(zoned, arr, none), typ)
    naive, bad_naive = _cast_plain_text(pc.if_else(zoned, none, arr), pa.timestamp(typ.unit))
    naive = pc.assume_timezone(naive, typ.tz) if typ.tz != "UTC" else naive.cast(typ)
    return pc.if_else(zoned, with_zone, naive.cast(typ)), bad_zoned | bad_naive
