"""Requests for the load generator, built and serialised once before any load is sent.

Inputs come from the model's metadata (random values of each input's datatype and shape)
or from a data file (the columns the metadata names for each input, as
:func:`conveyor.client.build_inputs` maps them), cut into requests of ``rows`` rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

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


def read_columns(path: str | Path, names: list[str], limit: int | None = None) -> dict[str, Any]:
    """``names`` from a Parquet file or folder (hive partitions), at most ``limit`` rows."""
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
        missing = [n for n in names if n not in dataset.schema.names]
        if missing:
            raise PayloadError(f"{path}: no column(s) {missing} (the model's inputs need {names})")
        table = dataset.head(limit, columns=names) if limit else dataset.to_table(columns=names)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise PayloadError(f"{path}: cannot read as Parquet: {exc}") from None
    out = {}
    for name in names:
        values = table.column(name).to_numpy(zero_copy_only=False)
        if values.dtype == object and len(values) and isinstance(values[0], np.ndarray):
            values = np.stack(values)  # a list column: one vector per row -> [rows, width]
        out[name] = values
    return out


def build_payloads(
    info: Any,
    columns: dict[str, Any],
    rows: int,
    *,
    version: str = "",
    limit: int = MAX_PAYLOADS,
) -> tuple[bytes, ...]:
    """Serialised ModelInferRequests of ``rows`` rows each, taken in order from ``columns``.

    At most ``limit`` requests are built (the load generator cycles through them); the last
    partial request is dropped so every request has exactly ``rows`` rows.
    """
    from conveyor.client import make_request

    if rows < 1:
        raise PayloadError(f"rows per request must be >= 1, got {rows}")
    available = min(len(v) for v in columns.values()) if columns else 0
    count = min(available // rows, limit)
    if count == 0:
        raise PayloadError(f"the data has {available} rows, fewer than {rows} rows per request")
    payloads = []
    for i in range(count):
        part = {name: values[i * rows : (i + 1) * rows] for name, values in columns.items()}
        try:
            request = make_request(info, part, version=version, request_id="")
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"request {i}: {exc}") from None
        payloads.append(request.SerializeToString())
    return tuple(payloads)
