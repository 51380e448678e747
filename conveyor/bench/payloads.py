"""Requests for the load generator, built and serialised once before any load is sent.

Inputs come from the model's metadata (random values of each input's datatype and shape)
or from a data file (the columns the metadata names for each input, as
:func:`conveyor.client.build_inputs` maps them), cut into requests of ``rows`` rows.
Rows of a data file that fail the client's input checks (:mod:`conveyor.casting`: a null
category, a value the datatype cannot hold unchanged) are left out and counted, the first
named by its file and row (:func:`build_payloads` with ``skipped``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conveyor.casting import CastError
from conveyor.errors import ConveyorError

MAX_PAYLOADS = 4096


class PayloadError(ConveyorError):
    """The requests could not be built (no such model, unusable data file)."""


def model_info(target: str, model: str, version: str = "", token: str | None = None) -> Any:
    """The model's metadata from the server (a :class:`conveyor.client.ModelInfo`)."""
    from conveyor.client import Client, InferenceServerError

    try:
        with Client(target, timeout=30, retries=5, token=token) as client:
            return client.model_metadata(model, version)
    except InferenceServerError as exc:
        raise PayloadError(f"model metadata for {model!r} from {target}: {exc}") from None


def random_inputs(info: Any, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``rows`` rows of random values for every input, keyed by input name.

    Floats are standard normal, integers uniform in [0, 100), BOOL fair coins, BYTES short
    tokens (``v0`` ... ``v9``); variable inner dimensions (-1) get size 1.
    """
    from conveyor.engine.tensors import NUMPY_DTYPES

    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for tensor in info.inputs:
        shape = (rows, *(d if d > 0 else 1 for d in tensor.shape[1:]))
        kind = tensor.datatype
        if kind == "BYTES":
            out[tensor.name] = np.array([f"v{k}" for k in range(10)], dtype=object)[
                rng.integers(0, 10, size=shape)
            ]
        elif kind == "BOOL":
            out[tensor.name] = rng.random(shape) < 0.5
        elif kind.startswith(("INT", "UINT")):
            out[tensor.name] = rng.integers(0, 100, size=shape).astype(NUMPY_DTYPES[kind])
        else:
            out[tensor.name] = rng.standard_normal(shape).astype(NUMPY_DTYPES[kind])
    return out


def needed_columns(info: Any) -> list[str]:
    """The data columns the model's inputs are built from (input names or their columns)."""
    names: list[str] = []
    for tensor in info.inputs:
        names.extend(tensor.columns or (tensor.name,))
    return names


@dataclass
class DataRows:
    """Columns read from data files, and which file each row came from.

    ``files``: each file's path and the number of its rows taken, in the order of the rows.
    ``invalid``: rows that cannot be sent at all (a null or short vector in a list column)
    and why; their place in ``columns`` holds a filler, so :func:`build_payloads` must be
    given them.
    """

    columns: dict[str, Any]
    files: list[tuple[str, int]] = field(default_factory=list)
    invalid: dict[int, str] = field(default_factory=dict)

    def where(self, row: int) -> str:
        """``PATH, row N`` (0-based within the file) for a row of :attr:`columns`."""
        for path, count in self.files:
            if row < count:
                return f"{path}, row {row}"
            row -= count
        return f"row {row}"


def read_columns(path: str | Path, names: list[str], limit: int | None = None) -> DataRows:
    """``names`` from a Parquet file or folder (hive partitions), at most ``limit`` rows,
    read file by file so that each row's file is known."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
        missing = [n for n in names if n not in dataset.schema.names]
        if missing:
            raise PayloadError(f"{path}: no column(s) {missing} (the model's inputs need {names})")
        tables, files, taken = [], [], 0
        for fragment in dataset.get_fragments():
            if limit is not None and taken >= limit:
                break
            try:
                # The dataset's schema, so that hive partition columns are filled in.
                scanner = fragment.scanner(schema=dataset.schema, columns=names)
                table = scanner.to_table() if limit is None else scanner.head(limit - taken)
            except (pa.ArrowException, NotImplementedError, TypeError) as exc:
                # Not OSError/ValueError (below): a file whose column has another type than
                # the first file's cannot be cast to it (ArrowNotImplementedError).
                raise PayloadError(
                    f"{fragment.path}: cannot read {_differing(fragment, dataset.schema, names)}"
                    f": {exc}"
                ) from None
            tables.append(table)
            files.append((fragment.path, table.num_rows))
            taken += table.num_rows
        table = pa.concat_tables(tables) if tables else dataset.schema.empty_table().select(names)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise PayloadError(f"{path}: cannot read as Parquet: {exc}") from None
    out = {}
    invalid: dict[int, str] = {}
    for name in names:
        column = table.column(name)
        values = column.to_numpy(zero_copy_only=False)
        kind = column.type
        if (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)
        ):
            values = _stack_vectors(name, values, invalid)
        out[name] = values
    return DataRows(out, files, invalid)


def _differing(fragment: Any, schema: Any, names: list[str]) -> str:
    """The columns of ``names`` whose type in ``fragment``'s file differs from ``schema``
    (the dataset's, taken from its first file), as text; "it" when none does."""
    import pyarrow as pa

    try:
        physical = fragment.physical_schema
    except (pa.ArrowException, OSError):  # the read error itself is what gets reported
        return "it"
    found = [
        f"column {name!r} as {schema.field(name).type} (the first file's type; this file "
        f"holds {physical.field(name).type})"
        for name in names
        if name in physical.names and physical.field(name).type != schema.field(name).type
    ]
    return ", ".join(found) or "it"


def _stack_vectors(name: str, values: Any, invalid: dict[int, str]) -> np.ndarray:
    """A list column (one vector per row) as ``[rows, width]``, the width being the most
    common length. A null row or one of another length goes into ``invalid`` (the first
    reason per row is kept) and gets a zero filler, so the rows keep their places."""
    lengths = [None if v is None else len(v) for v in values]
    counts: dict[int, int] = {}
    for n in lengths:
        if n is not None:
            counts[n] = counts.get(n, 0) + 1
    width = max(counts, key=counts.__getitem__) if counts else 0
    dtype = next((v.dtype for v, n in zip(values, lengths, strict=True) if n == width), np.float32)
    filler = np.zeros(width, dtype=dtype)
    rows = []
    for row, (v, n) in enumerate(zip(values, lengths, strict=True)):
        if n != width:
            what = "null" if n is None else f"{n} values, not {width}"
            invalid.setdefault(row, f"column {name!r}: {what}")
            v = filler
        rows.append(v)
    return np.stack(rows) if rows else np.zeros((0, width), dtype=dtype)


@dataclass
class SkippedRows:
    """Rows :func:`build_payloads` left out: how many, and where the first was and why."""

    count: int = 0
    first: str = ""


def _take(values: Any, rows: list[int]) -> Any:
    """``values`` at ``rows`` (a slice when they are consecutive, as they are unless some
    were skipped)."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return values[rows[0] : rows[-1] + 1]
    if isinstance(values, np.ndarray):
        return values[np.asarray(rows)]
    return [values[i] for i in rows]


def build_payloads(
    info: Any,
    columns: dict[str, Any],
    rows: int,
    *,
    version: str = "",
    limit: int = MAX_PAYLOADS,
    skipped: SkippedRows | None = None,
    where: Callable[[int], str] | None = None,
    invalid: Mapping[int, str] | None = None,
) -> tuple[bytes, ...]:
    """Serialised ModelInferRequests of ``rows`` rows each, taken in order from ``columns``.

    At most ``limit`` requests are built (the load generator cycles through them); the last
    partial request is dropped so every request has exactly ``rows`` rows. A row that fails
    the client's input checks is an error naming it (``where(row)``, default ``row N``);
    with ``skipped``, it is left out and counted there instead, and the requests are made of
    the rows that pass. ``invalid`` rows (:attr:`DataRows.invalid`) are treated the same way
    without being tried.
    """
    from conveyor.client import make_request

    if rows < 1:
        raise PayloadError(f"rows per request must be >= 1, got {rows}")
    name_row = where or (lambda row: f"row {row}")
    available = min(len(v) for v in columns.values()) if columns else 0
    payloads: list[bytes] = []
    pending: list[int] = []  # the rows of the request being built
    cursor = 0
    invalid = invalid or {}

    def leave_out(row: int, why: str) -> None:
        if skipped is None:
            raise PayloadError(f"{name_row(row)}: {why}")
        skipped.count += 1
        skipped.first = skipped.first or f"{name_row(row)}: {why}"

    def attempt() -> bytes | None:
        """The pending rows as one serialised request; None when a row failed the checks
        (it is then left out of ``pending``)."""
        part = {name: _take(values, pending) for name, values in columns.items()}
        try:
            request = make_request(info, part, version=version, request_id="")
        except CastError as exc:
            if exc.row is None or not 0 <= exc.row < len(pending):  # not one row's value
                raise PayloadError(f"request {len(payloads)}: {exc}") from None
            leave_out(pending.pop(exc.row), exc.unplaced)
            return None
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"request {len(payloads)}: {exc}") from None
        return request.SerializeToString()

    while len(payloads) < limit:
        while len(pending) < rows and cursor < available:
            if cursor in invalid:
                leave_out(cursor, invalid[cursor])
            else:
                pending.append(cursor)
            cursor += 1
        if len(pending) < rows:
            break
        body = attempt()
        if body is None:
            continue
        payloads.append(body)
        pending = []
    if not payloads:
        # The rows short of a request were not all tried: try them, so the count is true.
        while pending and attempt() is None:
            pass
        left = skipped.count if skipped else 0
        valid = f"{available - left} valid row(s) of {available}" if left else f"{available} rows"
        first = f"; the first left out: {skipped.first}" if skipped and skipped.count else ""
        raise PayloadError(f"the data has {valid}, fewer than {rows} rows per request{first}")
    return tuple(payloads)
