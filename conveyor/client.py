"""Client SDK for conveyor (and any Open Inference Protocol v2 gRPC server).

Sync::

    from conveyor.client import Client

    with Client("127.0.0.1:8001") as client:
        out = client.infer("fraud", {"x": np.zeros((2, 64), np.float32)})
        out["probability"]                           # numpy array [2, 1]

asyncio::

    async with AsyncClient("127.0.0.1:8001") as client:
        out = await client.infer("fraud", df)        # a pandas DataFrame, pyarrow Table or dict

Inputs may be a dict of arrays keyed by tensor name, a list of arrays in the
model's input order, a single array for a one-input model, or a table of
columns (dict of columns, pandas DataFrame, pyarrow Table): then each input
tensor is built from the feature columns the model metadata lists for it (``columns``:
1-D, one value per row, each read only when an input needs it, so unused columns of any
type are ignored), else from the value of its name when that name is no feature column.
Values are converted to the model's datatypes by :func:`conveyor.casting.cast` (BYTES:
strings as they are, other categorical values as the trainer's vocabulary keys; nulls are
refused). Outputs come back as a dict of numpy arrays.

One channel per client, reused for every call. ``timeout`` (seconds) sets one
deadline per method call, however many gRPC calls it makes (``infer`` looks up
the model's metadata first); calls answered UNAVAILABLE are retried with
exponential backoff (``retries`` times, never past the deadline); every other
failure raises an :class:`InferenceServerError` subclass carrying the gRPC
status code (:class:`ClientClosedError` once the client is closed, also for a
call in flight that closing cancelled).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import secrets
import ssl
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from conveyor.casting import cast
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.tensors import CONTENTS_FIELD, DATATYPES, from_raw, from_typed, to_raw

__all__ = [
    "AsyncClient",
    "Client",
    "ClientClosedError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InferResult",
    "InferenceServerError",
    "InternalError",
    "InvalidArgumentError",
    "ModelInfo",
    "NotFoundError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "TensorInfo",
    "UnauthenticatedError",
    "UnavailableError",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# -- errors ---------------------------------------------------------------------------------


class InferenceServerError(Exception):
    """A call failed; ``code`` is the :class:`grpc.StatusCode`, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(InferenceServerError):
    """The request does not match the model (names, datatypes, shapes, sizes)."""


class NotFoundError(InferenceServerError):
    """Unknown model or version."""


class UnavailableError(InferenceServerError):
    """Server or model not ready (retried automatically before this is raised)."""


class ResourceExhaustedError(InferenceServerError):
    """The model's queue is full, or the message exceeds the size limit."""


class DeadlineExceededError(InferenceServerError):
    """The deadline passed before the answer came."""


class InternalError(InferenceServerError):
    """The model raised; the message is the model's."""


class FailedPreconditionError(InferenceServerError):
    """The server does not allow this now (e.g. load/unload under ``--model-control poll``)."""


class RequestCancelledError(InferenceServerError):
    """The call was cancelled."""


class UnauthenticatedError(InferenceServerError):
    """The server wants a (different) bearer token."""


class PermissionDeniedError(InferenceServerError):
    """The token is valid but not allowed this call (load/unload without an admin token)."""


class ClientClosedError(InferenceServerError):
    """The client was closed (``close()``, or the end of its ``with`` block): make a new one.

    ``code`` is CANCELLED, the status gRPC gives calls on a closing channel elsewhere
    (grpc-go); grpcio itself raised a ValueError (sync) or a cygrpc UsageError (asyncio)."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.CANCELLED, "the client is closed; create a new one")


_ERRORS: dict[grpc.StatusCode, type[InferenceServerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def error_for(code: grpc.StatusCode, details: str) -> InferenceServerError:
    """The typed exception for a status code."""
    return _ERRORS.get(code, InferenceServerError)(code, details)


def _from_rpc(exc: grpc.RpcError, closed: bool = False) -> InferenceServerError:
    """The SDK's error for ``exc``; ``closed``: the client has been closed, so a
    CANCELLED call is one that closing cancelled (gRPC cancels the calls in flight on
    a channel it closes), not one the server or the caller cancelled."""
    code = exc.code()  # type: ignore[attr-defined]
    if closed and code == grpc.StatusCode.CANCELLED:
        return ClientClosedError()
    return error_for(code, exc.details() or "")  # type: ignore[attr-defined]


def _from_aio(exc: Exception) -> InferenceServerError:
    """The SDK's error for an exception grpc.aio raises that is not an RpcError (its cygrpc
    BaseError family: a call on a closed channel, a batch gRPC core refused to send)."""
    if isinstance(exc, grpc.aio.UsageError) and "closed" in str(exc).lower():
        return ClientClosedError()
    return InferenceServerError(
        grpc.StatusCode.UNKNOWN, f"gRPC failed in the client: {type(exc).__name__}: {exc}"
    )


# -- metadata and tensors ---------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: shape includes the batch dim (-1)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """ModelMetadata, decoded."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @classmethod
    def from_proto(cls, m: pb.ModelMetadataResponse) -> ModelInfo:
        def tensors(items: Any) -> tuple[TensorInfo, ...]:
            out = []
            for t in items:
                columns: tuple[str, ...] = ()
                if "columns" in t.parameters:
                    columns = tuple(json.loads(t.parameters["columns"].string_param))
                out.append(TensorInfo(t.name, t.datatype, tuple(t.shape), columns))
            return tuple(out)

        return cls(m.name, tuple(m.versions), m.platform, tensors(m.inputs), tensors(m.outputs))


@dataclass(frozen=True)
class InferResult:
    """One streamed answer: ``outputs`` on success, ``error`` otherwise; ``id`` is the request's."""

    id: str
    outputs: dict[str, np.ndarray] | None = None
    error: InferenceServerError | None = None


class _Columns:
    """A table's columns by name, each read (converted to numpy) only when an input needs
    it: a column no input uses is never looked at, whatever its type (an Arrow union has
    no numpy form) and however often its name repeats, as with a dict's unused keys."""

    def __init__(self, names: list[Any], read: Callable[[int], Any]) -> None:
        self._positions: dict[Any, list[int]] = {}
        for position, name in enumerate(names):
            self._positions.setdefault(name, []).append(position)
        self._read = read

    def __contains__(self, name: str) -> bool:
        return name in self._positions

    def read(self, name: str, what: str) -> Any:
        """Column ``name``; a ValueError naming ``what`` if the table has several."""
        positions = self._positions[name]
        if len(positions) > 1:
            raise ValueError(
                f"{what}: the table has {len(positions)} columns named {name!r}; "
                "rename or drop all but one"
            )
        return self._read(positions[0])


def _columns(inputs: Any) -> _Columns | None:
    """The columns of a dict, pandas DataFrame or pyarrow Table / RecordBatch; None if
    ``inputs`` is none of these."""
    if hasattr(inputs, "column_names") and hasattr(inputs, "column"):  # pyarrow
        return _Columns(
            list(inputs.column_names),
            lambda i: inputs.column(i).to_numpy(zero_copy_only=False),
        )
    if hasattr(inputs, "columns") and hasattr(inputs, "to_numpy") and hasattr(inputs, "iloc"):
        return _Columns([str(c) for c in inputs.columns], lambda i: inputs.iloc[:, i].to_numpy())
    if isinstance(inputs, Mapping):
        values = list(inputs.values())
        return _Columns(list(inputs), values.__getitem__)
    return None


def _cast(values: Any, tensor: TensorInfo) -> np.ndarray:
    return _batched(cast(values, tensor.datatype, f"input {tensor.name!r}"), tensor)


def _batched(array: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """``array`` with the batch dimension the tensor's shape has, if it lacks it."""
    inner = tensor.shape[1:]
    if array.ndim == len(inner):  # a single column for a [batch, 1] tensor, or one row
        if len(inner) == 1 and inner[0] == 1 and array.ndim == 1:
            array = array.reshape(-1, 1)
        else:
            array = array[np.newaxis, ...]
    return array


def _stack_columns(columns: _Columns, tensor: TensorInfo) -> np.ndarray:
    """The tensor's feature columns side by side, each converted on its own first: stacking
    raw columns would promote them to one common type (ints next to strings become the
    strings ``"7"``, bools ``"True"``), and a bad value could not be traced to its column.
    Each column must be 1-D with one value per row, the same number in every column."""
    arrays: list[np.ndarray] = []
    for name in tensor.columns:
        what = f"input {tensor.name!r}, column {name!r}"
        array = cast(columns.read(name, what), tensor.datatype, what)
        if array.ndim != 1:
            got = "a single value" if array.ndim == 0 else f"an array of shape {array.shape}"
            raise ValueError(
                f"{what}: expected a 1-D column (one value per row), got {got}"
                + ("; a single row is a list of one value" if array.ndim == 0 else "")
            )
        if arrays and len(array) != len(arrays[0]):
            raise ValueError(
                f"{what}: {len(array)} values, but column {tensor.columns[0]!r} has "
                f"{len(arrays[0])}: every feature column needs one value per row"
            )
        arrays.append(array)
    return np.stack(arrays, axis=1)


def build_inputs(info: ModelInfo, inputs: Any) -> list[tuple[TensorInfo, np.ndarray]]:
    """Arrays for each of the model's inputs, in metadata order, cast to its datatypes."""
    specs = info.inputs
    if isinstance(inputs, np.ndarray):
        if len(specs) != 1:
            raise ValueError(f"model {info.name!r} has {len(specs)} inputs; pass a dict")
        return [(specs[0], _cast(inputs, specs[0]))]
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != len(specs):
            raise ValueError(
                f"model {info.name!r} has {len(specs)} inputs, got a list of {len(inputs)}"
            )
        return [(s, _cast(v, s)) for s, v in zip(specs, inputs, strict=True)]
    columns = _columns(inputs)
    if columns is None:
        raise TypeError(
            "inputs: expected a dict, list, numpy array, pandas DataFrame or pyarrow "
            f"Table, got {type(inputs).__name__}"
        )
    # A name any input lists among its feature columns is a feature column, never a tensor:
    # a model trained on a column named "numeric" (its input tensor's name) read that
    # column as the whole tensor, one row, and sent the wrong rows without a word.
    feature_columns = {name: spec.name for spec in specs for name in spec.columns}
    return [(spec, _table_input(columns, spec, feature_columns)) for spec in specs]


def _table_input(columns: _Columns, spec: TensorInfo, feature_columns: dict[str, str]) -> Any:
    """The tensor for input ``spec`` from a table: its feature columns when the metadata lists
    them and the table has them all; else the value named like the tensor, when the input has
    no feature columns or that name is no input's feature column; else a ValueError naming
    the input and what is missing."""
    if spec.columns == (spec.name,) and spec.name in columns:
        # one feature column named like its input: column and tensor are the same values, as
        # a 1-D column or a [batch, 1] array
        return _cast(columns.read(spec.name, f"input {spec.name!r}"), spec)
    missing = [c for c in spec.columns if c not in columns]
    if spec.columns and not missing:
        return _batched(_stack_columns(columns, spec), spec)
    if spec.name in columns and (not spec.columns or spec.name not in feature_columns):
        return _cast(columns.read(spec.name, f"input {spec.name!r}"), spec)
    if not spec.columns:
        raise ValueError(f"input {spec.name!r}: no column of that name")
    message = f"input {spec.name!r}: missing columns {missing}"
    if spec.name in columns:
        owner = feature_columns[spec.name]
        message += (
            f"; the table's {spec.name!r} is read as a feature column of input {owner!r}, "
            "not as this tensor: pass the tensors as a list in the model's input order"
        )
    raise ValueError(message)


_ids = itertools.count(1)
# Request ids must not repeat across client processes (server logs are searched by them):
# a random token per import, and the pid for processes forked after it.
_ID_TOKEN = secrets.token_hex(3)


def _next_request_id() -> str:
    return f"c-{_ID_TOKEN}-{os.getpid()}-{next(_ids)}"


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def _check_str(value: Any, argument: str, example: str = "") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{argument}: expected a str{example}, got {_describe(value)}")
    return value


def _check_version(version: Any) -> str:
    return _check_str(version, "version", " such as '1' ('' for the server's choice)")


def _check_bool(value: Any, argument: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argument}: expected a bool, got {_describe(value)}")
    return bool(value)


def _check_batches(batches: Any) -> None:
    """``stream_infer``'s ``batches``: checked before the stream opens, where gRPC's own
    request thread would only report a bare TypeError from iterating it."""
    if isinstance(batches, (str, bytes, Mapping)) or not isinstance(
        batches, (Iterable, AsyncIterable)
    ):
        raise TypeError(
            f"batches: expected an iterable of batches (one request each), got {_describe(batches)}"
        )


def _check_seconds(value: Any, argument: str) -> float:
    """``value`` as seconds: a finite real number >= 0 (bools are not numbers here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{argument}: expected seconds (an int or float), got {_describe(value)}")
    seconds = float(value)
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{argument}: expected a finite number of seconds >= 0, got {value!r}")
    return seconds


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


_INT64_RANGE = (-(2**63), 2**63 - 1)


def _set_parameter(param: Any, key: str, value: Any) -> None:
    """One request parameter, its type from the value's (numpy scalars as their Python type)."""
    if isinstance(value, (bool, np.bool_)):
        param.bool_param = bool(value)
    elif _is_integer(value):
        if not _INT64_RANGE[0] <= int(value) <= _INT64_RANGE[1]:
            raise ValueError(f"parameters[{key!r}]: {int(value)} is out of int64's range")
        param.int64_param = int(value)
    elif isinstance(value, (float, np.floating)):
        param.double_param = float(value)
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise TypeError(
            f"parameters[{key!r}]: expected a bool, int, float or str, got {_describe(value)}"
        )


def _request_template(
    *,
    outputs: Iterable[str] | str | None = None,
    priority: int = 0,
    queue_timeout: float | None = None,
    parameters: Mapping[str, bool | int | float | str] | None = None,
) -> pb.ModelInferRequest:
    """What of a ModelInferRequest does not depend on its inputs, each argument checked
    first (a TypeError or ValueError naming it, rather than protobuf's bare one or a wrong
    request): ``outputs`` may be one name (a str) or several."""
    template = pb.ModelInferRequest()
    if outputs is not None:
        names = [outputs] if isinstance(outputs, str) else outputs
        try:
            names = list(names)
        except TypeError:
            raise TypeError(
                "outputs: expected output names (a str or a list of them), "
                f"got {_describe(outputs)}"
            ) from None
        for position, name in enumerate(names):
            _check_str(name, f"outputs[{position}]", " (an output name)")
        template.outputs.extend(
            pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in names
        )
    if not _is_integer(priority):
        raise TypeError(f"priority: expected an int, got {_describe(priority)}")
    if not 0 <= int(priority) < 2**64:
        raise ValueError(
            f"priority: expected an int >= 0 (1 = highest, 0 = the model's default), got {priority}"
        )
    if priority:
        template.parameters["priority"].uint64_param = int(priority)
    if queue_timeout is not None:
        seconds = _check_seconds(queue_timeout, "queue_timeout")
        if seconds == 0:
            # On the wire 0 means no limit (Triton's "timeout"): the opposite of asking.
            raise ValueError("queue_timeout: expected seconds > 0 (None: no limit), got 0")
        # Rounded up: a timeout under 1 us truncated to 0, which is no limit at all.
        microseconds = max(1, math.ceil(seconds * 1e6))
        if microseconds > _INT64_RANGE[1]:
            raise ValueError(f"queue_timeout: {queue_timeout!r} seconds is out of range")
        template.parameters["timeout"].int64_param = microseconds
    if parameters is not None:
        if not isinstance(parameters, Mapping):
            raise TypeError(f"parameters: expected a dict, got {_describe(parameters)}")
        for key, value in parameters.items():
            _check_str(key, f"parameters key {key!r}")
            _set_parameter(template.parameters[key], key, value)
    return template


def _make_request(
    info: ModelInfo,
    inputs: Any,
    version: str,
    template: pb.ModelInferRequest,
    request_id: str | None = None,
) -> pb.ModelInferRequest:
    arrays = build_inputs(info, inputs)
    request = pb.ModelInferRequest()
    request.CopyFrom(template)
    request.model_name = info.name
    request.model_version = version
    request.id = request_id if request_id is not None else _next_request_id()
    request.inputs.extend(
        pb.ModelInferRequest.InferInputTensor(
            name=spec.name, datatype=spec.datatype, shape=array.shape
        )
        for spec, array in arrays
    )
    request.raw_input_contents.extend(to_raw(array, spec.datatype) for spec, array in arrays)
    return request


def make_request(
    info: ModelInfo,
    inputs: Any,
    *,
    version: str = "",
    outputs: Iterable[str] | str | None = None,
    request_id: str | None = None,
    priority: int = 0,
    queue_timeout: float | None = None,
    parameters: Mapping[str, bool | int | float | str] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest with raw contents for ``inputs`` (see :func:`build_inputs`).

    ``outputs``: one output name or several (default: all). ``parameters``: request
    parameters by name; bools (numpy's too) are sent as bool, integers as int64, floats
    as double, strings as string. Arguments of the wrong type or range are a TypeError or
    ValueError naming the argument."""
    if request_id is not None:
        _check_str(request_id, "request_id")
    template = _request_template(
        outputs=outputs, priority=priority, queue_timeout=queue_timeout, parameters=parameters
    )
    return _make_request(info, inputs, _check_version(version), template, request_id)


def parse_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Outputs by name, as numpy arrays (raw or typed contents)."""
    raw = response.raw_output_contents
    out = {}
    for i, tensor in enumerate(response.outputs):
        shape = tuple(tensor.shape)
        _check_readable(tensor.name, tensor.datatype, typed=not raw)
        if raw:
            out[tensor.name] = from_raw(raw[i], tensor.datatype, shape)
        else:
            out[tensor.name] = from_typed(tensor.contents, tensor.datatype, shape)
    return out


def _check_readable(name: str, datatype: str, typed: bool) -> None:
    """A clear error for an output this client cannot turn into numpy (a KeyError before)."""
    if datatype not in DATATYPES:
        raise ValueError(
            f"output {name!r}: datatype {datatype} is not supported by this client "
            f"(it reads {', '.join(sorted(DATATYPES))})"
        )
    if typed and datatype not in CONTENTS_FIELD:
        raise ValueError(
            f"output {name!r}: {datatype} has no typed contents field in the protocol; the "
            "server must send it in raw_output_contents"
        )


# -- channel set-up ---------------------------------------------------------------------------


def _read(value: bytes | str | Path | None, argument: str) -> bytes | None:
    """PEM bytes, or a file's; None stays None. Empty is an error, not "not given": a
    blank PEM from an unset variable or an empty file must not quietly mean plaintext,
    with the bearer token sent in the clear."""
    if value is None:
        return None
    if isinstance(value, str) and not value:
        raise ValueError(f"{argument}: an empty path (pass None to leave it out)")
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        data = value.encode()  # PEM text given as a str (it was taken for a file name)
    else:
        try:
            data = Path(value).read_bytes()
        except OSError as exc:
            raise ValueError(f"{argument}: cannot read {value}: {exc.strerror or exc}") from None
    if not data.strip():
        where = "" if isinstance(value, bytes) else f" ({value} is empty)"
        raise ValueError(f"{argument}: no PEM data{where} (pass None to leave it out)")
    return data


def _check_pems(pems: dict[str, bytes | None]) -> None:
    """What gRPC would only report in its own log lines at the first call ("Failed to create
    security handshaker", retried as if the server were down): certificates that do not
    parse, a key that is not a key or not the certificate's. A ValueError naming the
    argument instead, from the constructor."""
    root, key, chain = pems["root_certificates"], pems["private_key"], pems["certificate_chain"]
    if root is not None:
        try:
            ssl.create_default_context(cadata=root.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise ValueError(
                f"root_certificates: no PEM certificate could be loaded ({exc.reason or exc})"
            ) from None
    if key is None or chain is None:
        return
    # ssl loads a key pair from files only: a private directory (mode 0700), removed at
    # once, holds the copies for the check.
    with tempfile.TemporaryDirectory(prefix="conveyor-tls-") as folder:
        key_file, chain_file = Path(folder, "key.pem"), Path(folder, "chain.pem")
        key_file.write_bytes(key)
        chain_file.write_bytes(chain)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(chain_file, key_file)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError("private_key does not match certificate_chain") from None
            raise ValueError(
                f"private_key / certificate_chain: not a PEM key and certificate chain "
                f"({exc.reason or exc})"
            ) from None


_CHARACTER_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}


def _check_token(token: Any) -> None:
    """Refuse a token gRPC cannot send: the header value ``Bearer <token>`` may hold only
    printable ASCII (gRPC core refused it at every call, reported as INTERNAL by the sync
    client, as a raw cygrpc exception by the asyncio one) and may not end in whitespace."""
    if token is None:
        return
    _check_str(token, "token")
    if not token:
        raise ValueError("token: empty (pass None to send no token)")
    for position, character in enumerate(token):
        if not " " <= character <= "~":
            name = _CHARACTER_NAMES.get(character) or (
                f"U+{ord(character):04X}, not ASCII"
                if ord(character) > 127
                else f"control character U+{ord(character):04X}"
            )
            end = " (its end: a token read from a file keeps its newline; strip it)"
            raise ValueError(
                f"token: {name} ({character!r}) at position {position}"
                + (end if position == len(token) - 1 and character in "\r\n" else "")
                + ": an HTTP/2 header value holds printable ASCII only"
            )
    if token.endswith(" "):
        raise ValueError(
            "token: a trailing space: an HTTP/2 header value may not end in whitespace"
        )


@dataclass
class _Settings:
    address: str
    timeout: float | None
    retries: int
    backoff: float
    max_backoff: float
    metadata: tuple[tuple[str, str], ...]
    options: list[tuple[str, Any]]
    credentials: grpc.ChannelCredentials | None


def _settings(
    address: str,
    *,
    timeout: float | None,
    retries: int,
    backoff: float,
    max_backoff: float,
    tls: bool,
    root_certificates: bytes | str | Path | None,
    private_key: bytes | str | Path | None,
    certificate_chain: bytes | str | Path | None,
    token: str | None,
    max_message_bytes: int,
    options: Iterable[tuple[str, Any]],
) -> _Settings:
    _check_str(address, "address", " such as 'localhost:8001'")
    if (private_key is None) != (certificate_chain is None):
        # gRPC core aborts the whole process (SIGABRT) on a key without its certificate
        given, missing = (
            ("private_key", "certificate_chain")
            if private_key is not None
            else ("certificate_chain", "private_key")
        )
        raise ValueError(
            f"{given} given without {missing}: for mutual TLS the client key and its "
            "certificate chain go together (pass both, or neither)"
        )
    _check_token(token)
    if timeout is not None:
        timeout = _check_seconds(timeout, "timeout")
    # Checked here: they were first used at a call's first UNAVAILABLE, which is when
    # a TypeError or "sleep length must be non-negative" would surface.
    for name, value, low, high in (
        ("retries", retries, 0, None),
        ("max_message_bytes", max_message_bytes, 1, 2**31 - 1),
    ):
        if not _is_integer(value):
            raise TypeError(f"{name}: expected an int, got {_describe(value)}")
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise ValueError(f"{name}: expected an int {bounds}, got {value}")
    backoff = _check_seconds(backoff, "backoff")
    max_backoff = _check_seconds(max_backoff, "max_backoff")
    credentials = None
    pems = {
        "root_certificates": root_certificates,
        "private_key": private_key,
        "certificate_chain": certificate_chain,
    }
    if tls or any(v is not None for v in pems.values()):
        read = {name: _read(value, name) for name, value in pems.items()}
        _check_pems(read)
        credentials = grpc.ssl_channel_credentials(**read)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return _Settings(
        address=address,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        metadata=metadata,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *options,
        ],
        credentials=credentials,
    )


def _delay(settings: _Settings, attempt: int) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, base * 2**attempt)]."""
    return random.uniform(0, min(settings.max_backoff, settings.backoff * (2**attempt)))


class _Common:
    """What the sync and asyncio clients share: settings, channel, retry rules
    (see :class:`Client` for the arguments)."""

    _grpc: Any  # grpc or grpc.aio: which kind of channel to open
    _settings: _Settings
    # (model, version asked for) -> (its metadata, time.monotonic() when read)
    _info: dict[tuple[str, str], tuple[ModelInfo, float]]

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = None,
        retries: int = 3,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        options: Iterable[tuple[str, Any]] = (),
        metadata_max_age: float | None = 60.0,
    ) -> None:
        self._metadata_max_age = (
            None
            if metadata_max_age is None
            else _check_seconds(metadata_max_age, "metadata_max_age")
        )
        self._settings = s = _settings(
            address,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            token=token,
            max_message_bytes=max_message_bytes,
            options=options,
        )
        self._loop = self._channel_loop()
        if s.credentials is None:
            self._channel = self._grpc.insecure_channel(address, options=s.options)
        else:
            self._channel = self._grpc.secure_channel(address, s.credentials, options=s.options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._info = {}
        self._closed = False
        # AsyncClient's streams in flight, which close() cancels itself: grpc.aio's
        # channel close cancels only the calls it finds in a task of their own, and a
        # stream whose requests are all sent is in the caller's task alone.
        self._streams: set[Any] = set()

    def _channel_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop an asyncio channel belongs to (None for the sync client)."""
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError()

    def _deadline(self, timeout: float | None) -> float | None:
        t = self._settings.timeout if timeout is None else _check_seconds(timeout, "timeout")
        return None if t is None else time.monotonic() + t

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _may_retry(
        self, exc: grpc.RpcError, attempt: int, deadline: float | None, retries: int | None
    ) -> float | None:
        """Seconds to wait before retrying, or None to give up (``retries``: the client's
        when None)."""
        retries = self._settings.retries if retries is None else retries
        if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt >= retries:  # type: ignore[attr-defined]
            return None
        wait = _delay(self._settings, attempt)
        if deadline is not None and time.monotonic() + wait >= deadline:
            return None
        return wait

    def _cached_info(self, key: tuple[str, str], refresh: bool) -> ModelInfo | None:
        """The cached metadata for ``key``, or None when it must be read (``refresh``, never
        read, or older than ``metadata_max_age``)."""
        cached = self._info.get(key)
        if refresh or cached is None:
            return None
        info, read_at = cached
        max_age = self._metadata_max_age
        if max_age is not None and time.monotonic() - read_at > max_age:
            return None
        return info

    def _forget_info(self, model: str) -> None:
        self._info = {k: v for k, v in self._info.items() if k[0] != model}


def _target_version(info: ModelInfo, version: str) -> str:
    """The version a request built from ``info`` is sent to: ``version`` when the caller named
    one; else the version the metadata describes, the highest it lists (conveyor and Triton
    answer a request naming no version with their highest loaded one), so that the request
    is never run by a newer version whose inputs are laid out differently; '' (the server's
    choice) when the metadata lists no numbered version."""
    if version:
        return version
    numbers = [v for v in info.versions if v.isdecimal()]
    return max(numbers, key=int) if numbers else ""


# -- sync client --------------------------------------------------------------------------------


class Client(_Common):
    """A blocking client over one gRPC channel.

    Args:
        address: ``host:port``.
        timeout: default deadline per call in seconds (default None: no deadline); one
            deadline covers the whole method call, retries and backoff included (for
            ``infer``, also its model-metadata lookup).
        retries: retries for UNAVAILABLE (default 3); other errors are raised at once.
        backoff: first retry's maximum wait in seconds, doubled each retry (default 0.05),
            capped at ``max_backoff`` (default 1.0).
        tls: use TLS with the system roots; implied by any of the PEM options.
        root_certificates, private_key, certificate_chain: PEM bytes or file paths
            (server CA; client key and certificate for mutual TLS: the last two go
            together, and one without the other is a ValueError).
        token: sent as ``authorization: Bearer <token>`` on every call.
        max_message_bytes: largest message sent or received (default 64 MiB).
        options: extra gRPC channel options.
        metadata_max_age: seconds the model metadata a request is built from is reused
            before it is read again (default 60; None: until its version is no longer
            served). A request naming no version is sent to the version whose metadata
            built it (the highest the metadata lists), so a newer version with another
            column layout never runs it; when that version stops being served (NOT_FOUND
            or UNAVAILABLE), the metadata is read again and the request rebuilt, once,
            for the version that is.
    """

    _grpc = grpc  # the module whose channels this client uses

    def close(self) -> None:
        """Close the channel; later calls raise :class:`ClientClosedError` (closing again is
        a no-op)."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        deadline: float | None,
        retries: int | None = None,
    ) -> Any:
        """One unary call, retried on UNAVAILABLE (``retries`` times, the client's when None);
        every attempt and wait ends by ``deadline``."""
        self._check_open()
        attempt = 0
        while True:
            try:
                return method(
                    request,
                    timeout=self._remaining(deadline),
                    metadata=self._settings.metadata or None,
                )
            except ValueError:
                # grpcio's "Cannot invoke RPC on closed channel!": closed by another thread
                if self._closed:
                    raise ClientClosedError() from None
                raise
            except grpc.RpcError as exc:
                wait = self._may_retry(exc, attempt, deadline, retries)
                if wait is None:
                    raise _from_rpc(exc, self._closed) from None
                time.sleep(wait)
                attempt += 1

    # health and metadata
    def is_server_live(self, timeout: float | None = None) -> bool:
        return self._call(
            self._stub.ServerLive, pb.ServerLiveRequest(), self._deadline(timeout)
        ).live

    def is_server_ready(self, timeout: float | None = None) -> bool:
        return self._call(
            self._stub.ServerReady, pb.ServerReadyRequest(), self._deadline(timeout)
        ).ready

    def is_model_ready(self, model: str, version: str = "", timeout: float | None = None) -> bool:
        request = pb.ModelReadyRequest(
            name=_check_str(model, "model"), version=_check_version(version)
        )
        return self._call(self._stub.ModelReady, request, self._deadline(timeout)).ready

    def server_metadata(self, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return self._call(
            self._stub.ServerMetadata, pb.ServerMetadataRequest(), self._deadline(timeout)
        )

    def model_metadata(
        self, model: str, version: str = "", *, refresh: bool = False, timeout: float | None = None
    ) -> ModelInfo:
        """The model's inputs and outputs (cached per client for ``metadata_max_age``
        seconds; ``refresh`` re-reads it)."""
        return self._model_info(model, version, refresh, self._deadline(timeout))

    def _model_info(
        self, model: str, version: str, refresh: bool, deadline: float | None
    ) -> ModelInfo:
        self._check_open()
        key = (_check_str(model, "model"), _check_version(version))
        info = self._cached_info(key, refresh)
        if info is None:
            request = pb.ModelMetadataRequest(name=model, version=version)
            info = ModelInfo.from_proto(self._call(self._stub.ModelMetadata, request, deadline))
            self._info[key] = (info, time.monotonic())
        return info

    # inference
    def infer(
        self,
        model: str,
        inputs: Any,
        *,
        version: str = "",
        outputs: Iterable[str] | str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        queue_timeout: float | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, bool | int | float | str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; returns outputs by name.

        ``outputs``: the output names wanted (one as a str, or a list; default all).
        ``priority``: 1 = highest, 0 = the model's default. ``queue_timeout``:
        seconds the request may wait in the server's queue (the ``timeout``
        request parameter). ``parameters``: request parameters (bool, int, float or
        str; numpy scalars as their Python type). ``timeout`` (seconds; default the
        client's) is one deadline for the whole call: the model-metadata lookup (the
        first call per model), the ModelInfer call, every UNAVAILABLE retry of either and
        the backoff waits between them all end by it; each call gets what is left.
        An argument of the wrong type or range is a TypeError or ValueError naming it,
        raised before anything is sent.
        """
        deadline = self._deadline(timeout)
        if request_id is not None:
            _check_str(request_id, "request_id")
        template = _request_template(
            outputs=outputs, priority=priority, queue_timeout=queue_timeout, parameters=parameters
        )
        info = self._model_info(model, version, False, deadline)
        target = _target_version(info, version)
        request = _make_request(info, inputs, target, template, request_id)
        if target == version:
            return parse_response(self._call(self._stub.ModelInfer, request, deadline))
        try:
            # Pinned to the version whose metadata built it: once that version is no longer
            # served, read the metadata again and build the request for the one that is.
            response = self._call(self._stub.ModelInfer, request, deadline, retries=0)
        except (NotFoundError, UnavailableError):
            info = self._model_info(model, version, True, deadline)
            target = _target_version(info, version)
            request = _make_request(info, inputs, target, template, request.id)
            response = self._call(self._stub.ModelInfer, request, deadline)
        return parse_response(response)

    def stream_infer(
        self,
        model: str,
        batches: Iterable[Any],
        *,
        version: str = "",
        timeout: float | None = None,
        priority: int = 0,
    ) -> Iterator[InferResult]:
        """Send each item of ``batches`` on one ModelStreamInfer stream; yields an
        :class:`InferResult` per request, in request order (the server answers a stream in
        order); errors do not end the stream.

        Stopping early (``break``, closing the generator) cancels the stream: no more
        of ``batches`` is read or sent. With no ``version``, every request of the stream
        goes to the version whose metadata built them (see ``metadata_max_age``): a stream
        that outlives that version gets its remaining answers as errors, never another
        version's results; open a new stream then. ``timeout`` (seconds) is one deadline for
        the metadata lookup and the whole stream. A batch that cannot be converted (a
        ValueError naming the input and column), or an exception raised by
        ``batches`` itself, ends the stream there: the answers to the batches before
        it are still yielded, then that exception is raised to the caller."""
        _check_batches(batches)
        deadline = self._deadline(timeout)
        template = _request_template(priority=priority)
        info = self._model_info(model, version, False, deadline)
        target = _target_version(info, version)  # one version for the whole stream
        failed: list[Exception] = []

        def requests() -> Iterator[pb.ModelInferRequest]:
            # gRPC reads this in its own thread and would turn an exception into
            # "UNKNOWN: Exception iterating requests!": keep it for the caller instead.
            try:
                for inputs in batches:
                    yield _make_request(info, inputs, target, template)
            except Exception as exc:
                failed.append(exc)

        call = self._stub.ModelStreamInfer(
            requests(),
            timeout=self._remaining(deadline),
            metadata=self._settings.metadata or None,
        )
        try:
            for item in call:
                yield _stream_result(item)
        except grpc.RpcError as exc:
            if failed:
                raise failed[0] from None
            raise _from_rpc(exc, self._closed) from None
        finally:
            # A caller that stops iterating (break, close) ends the stream: otherwise gRPC
            # goes on consuming ``batches`` and the server on running them. A no-op once
            # the stream has ended.
            call.cancel()
        if failed:
            raise failed[0]

    # repository and statistics
    def repository_index(self, ready: bool = False, timeout: float | None = None) -> Any:
        request = pb.RepositoryIndexRequest(ready=_check_bool(ready, "ready"))
        return list(self._call(self._stub.RepositoryIndex, request, self._deadline(timeout)).models)

    def load_model(
        self,
        model: str,
        config: Mapping[str, Any] | str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Load (or reload) ``model`` (``--model-control explicit``). ``config``: a model
        configuration (a dict, or its JSON text) used for this load instead of the
        versions' config.json files, as Triton's ``config`` load parameter."""
        request = _load_request(model, config)
        self._forget_info(model)
        self._call(self._stub.RepositoryModelLoad, request, self._deadline(timeout))

    def unload_model(self, model: str, timeout: float | None = None) -> None:
        request = pb.RepositoryModelUnloadRequest(model_name=_check_str(model, "model"))
        self._forget_info(model)
        self._call(self._stub.RepositoryModelUnload, request, self._deadline(timeout))

    def model_statistics(
        self, model: str = "", version: str = "", timeout: float | None = None
    ) -> Any:
        request = pb.ModelStatisticsRequest(
            name=_check_str(model, "model", " ('' for every model)"),
            version=_check_version(version),
        )
        return list(
            self._call(self._stub.ModelStatistics, request, self._deadline(timeout)).model_stats
        )

    def model_config(self, model: str, version: str = "", timeout: float | None = None) -> Any:
        """The served configuration of ``model`` (``version``: "" for the one served by
        default) as Triton's ``inference.ModelConfig`` message, flags applied."""
        request = pb.ModelConfigRequest(
            name=_check_str(model, "model"), version=_check_version(version)
        )
        return self._call(self._stub.ModelConfig, request, self._deadline(timeout)).config


def _load_request(model: str, config: Mapping[str, Any] | str | None) -> Any:
    request = pb.RepositoryModelLoadRequest(model_name=_check_str(model, "model"))
    if config is not None:
        if isinstance(config, Mapping):
            text = json.dumps(dict(config))
        elif isinstance(config, str):
            text = config
        else:
            raise TypeError(
                f"config: expected a dict or its JSON text, got {type(config).__name__}"
            )
        request.parameters["config"].string_param = text
    return request


def _stream_result(item: pb.ModelStreamInferResponse) -> InferResult:
    response = item.infer_response
    if item.error_message:
        code_name, _, details = item.error_message.partition(": ")
        code = getattr(grpc.StatusCode, code_name, grpc.StatusCode.UNKNOWN)
        if code is grpc.StatusCode.UNKNOWN:
            details = item.error_message
        return InferResult(response.id, error=error_for(code, details))
    return InferResult(response.id, outputs=parse_response(response))


# -- asyncio client -------------------------------------------------------------------------------


class AsyncClient(_Common):
    """The asyncio twin of :class:`Client` (same arguments; methods are coroutines).

    Create it inside a running event loop and use it from that loop only (its grpc.aio
    channel belongs to the loop); anything else is a RuntimeError saying so."""

    _grpc = grpc.aio

    def _channel_loop(self) -> asyncio.AbstractEventLoop:
        # A grpc.aio channel works only in the loop it was made in; made outside one,
        # every call failed later with "attached to a different loop".
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "AsyncClient: create it inside a running event loop (in a coroutine, e.g. "
                "under asyncio.run): its grpc.aio channel belongs to that loop"
            ) from None

    def _check_loop(self) -> None:
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                "AsyncClient: used from another event loop than the one it was created in; "
                "create one client per loop"
            )

    async def close(self) -> None:
        """See :meth:`Client.close`."""
        self._closed = True
        for call in list(self._streams):
            call.cancel()
        await self._channel.close()

    def _raise_if_closed(self) -> None:
        """Raise :class:`ClientClosedError` for a call that ``close()`` cancelled: grpc.aio
        cancels the calls in flight on a channel it closes, and they end in
        ``asyncio.CancelledError``. One the caller's own task is cancelling is left to
        propagate as it came."""
        task = asyncio.current_task()
        if self._closed and (task is None or not task.cancelling()):
            raise ClientClosedError() from None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        deadline: float | None,
        retries: int | None = None,
    ) -> Any:
        """One unary call, retried on UNAVAILABLE (``retries`` times, the client's when None);
        every attempt and wait ends by ``deadline``."""
        self._check_open()
        self._check_loop()
        attempt = 0
        while True:
            try:
                return await method(
                    request,
                    timeout=self._remaining(deadline),
                    metadata=self._settings.metadata or None,
                )
            except asyncio.CancelledError:
                self._raise_if_closed()
                raise
            except grpc.aio.BaseError as exc:
                raise _from_aio(exc) from exc
            except grpc.RpcError as exc:
                wait = self._may_retry(exc, attempt, deadline, retries)
                if wait is None:
                    raise _from_rpc(exc, self._closed) from None
                await asyncio.sleep(wait)
                attempt += 1

    async def is_server_live(self, timeout: float | None = None) -> bool:
        return (
            await self._call(self._stub.ServerLive, pb.ServerLiveRequest(), self._deadline(timeout))
        ).live

    async def is_server_ready(self, timeout: float | None = None) -> bool:
        return (
            await self._call(
                self._stub.ServerReady, pb.ServerReadyRequest(), self._deadline(timeout)
            )
        ).ready

    async def is_model_ready(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> bool:
        request = pb.ModelReadyRequest(
            name=_check_str(model, "model"), version=_check_version(version)
        )
        return (await self._call(self._stub.ModelReady, request, self._deadline(timeout))).ready

    async def model_metadata(
        self, model: str, version: str = "", *, refresh: bool = False, timeout: float | None = None
    ) -> ModelInfo:
        """See :meth:`Client.model_metadata`."""
        return await self._model_info(model, version, refresh, self._deadline(timeout))

    async def _model_info(
        self, model: str, version: str, refresh: bool, deadline: float | None
    ) -> ModelInfo:
        self._check_open()
        key = (_check_str(model, "model"), _check_version(version))
        info = self._cached_info(key, refresh)
        if info is None:
            request = pb.ModelMetadataRequest(name=model, version=version)
            info = ModelInfo.from_proto(
                await self._call(self._stub.ModelMetadata, request, deadline)
            )
            self._info[key] = (info, time.monotonic())
        return info

    async def infer(
        self,
        model: str,
        inputs: Any,
        *,
        version: str = "",
        outputs: Iterable[str] | str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        queue_timeout: float | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, bool | int | float | str] | None = None,
    ) -> dict[str, np.ndarray]:
        """See :meth:`Client.infer`."""
        deadline = self._deadline(timeout)
        if request_id is not None:
            _check_str(request_id, "request_id")
        template = _request_template(
            outputs=outputs, priority=priority, queue_timeout=queue_timeout, parameters=parameters
        )
        info = await self._model_info(model, version, False, deadline)
        target = _target_version(info, version)
        request = _make_request(info, inputs, target, template, request_id)
        if target == version:
            return parse_response(await self._call(self._stub.ModelInfer, request, deadline))
        try:
            # See Client.infer: pinned to the version whose metadata built the request.
            response = await self._call(self._stub.ModelInfer, request, deadline, retries=0)
        except (NotFoundError, UnavailableError):
            info = await self._model_info(model, version, True, deadline)
            target = _target_version(info, version)
            request = _make_request(info, inputs, target, template, request.id)
            response = await self._call(self._stub.ModelInfer, request, deadline)
        return parse_response(response)

    async def stream_infer(
        self,
        model: str,
        batches: Iterable[Any] | AsyncIterable[Any],
        *,
        version: str = "",
        timeout: float | None = None,
        priority: int = 0,
    ) -> AsyncIterator[InferResult]:
        """See :meth:`Client.stream_infer`."""
        self._check_open()
        self._check_loop()
        _check_batches(batches)
        deadline = self._deadline(timeout)
        template = _request_template(priority=priority)
        info = await self._model_info(model, version, False, deadline)
        target = _target_version(info, version)  # one version for the whole stream
        failed: list[Exception] = []

        async def requests() -> AsyncIterator[pb.ModelInferRequest]:
            # grpc.aio reads this in its own task and would cancel the call on an
            # exception (the caller saw a bare CancelledError): keep it for the caller.
            try:
                if isinstance(batches, AsyncIterable):
                    async for inputs in batches:
                        yield _make_request(info, inputs, target, template)
                else:
                    for inputs in batches:
                        yield _make_request(info, inputs, target, template)
            except Exception as exc:
                failed.append(exc)

        call = self._stub.ModelStreamInfer(
            requests(),
            timeout=self._remaining(deadline),
            metadata=self._settings.metadata or None,
        )
        self._streams.add(call)
        try:
            async for item in call:
                yield _stream_result(item)
        except asyncio.CancelledError:
            self._raise_if_closed()
            raise
        except grpc.aio.BaseError as exc:
            raise _from_aio(exc) from exc
        except grpc.RpcError as exc:
            if failed:
                raise failed[0] from None
            raise _from_rpc(exc, self._closed) from None
        finally:
            self._streams.discard(call)
            call.cancel()  # see Client.stream_infer: a caller that stops ends the stream
        if self._closed and call.cancelled():
            raise ClientClosedError()  # (a cancelled stream can also just end)
        if failed:
            raise failed[0]

    async def repository_index(self, ready: bool = False, timeout: float | None = None) -> Any:
        request = pb.RepositoryIndexRequest(ready=_check_bool(ready, "ready"))
        return list(
            (await self._call(self._stub.RepositoryIndex, request, self._deadline(timeout))).models
        )

    async def load_model(
        self,
        model: str,
        config: Mapping[str, Any] | str | None = None,
        timeout: float | None = None,
    ) -> None:
        """As :meth:`Client.load_model`."""
        request = _load_request(model, config)
        self._forget_info(model)
        await self._call(self._stub.RepositoryModelLoad, request, self._deadline(timeout))

    async def unload_model(self, model: str, timeout: float | None = None) -> None:
        request = pb.RepositoryModelUnloadRequest(model_name=_check_str(model, "model"))
        self._forget_info(model)
        await self._call(self._stub.RepositoryModelUnload, request, self._deadline(timeout))

    async def model_statistics(
        self, model: str = "", version: str = "", timeout: float | None = None
    ) -> Any:
        request = pb.ModelStatisticsRequest(
            name=_check_str(model, "model", " ('' for every model)"),
            version=_check_version(version),
        )
        return list(
            (
                await self._call(self._stub.ModelStatistics, request, self._deadline(timeout))
            ).model_stats
        )

    async def model_config(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> Any:
        """As :meth:`Client.model_config`."""
        request = pb.ModelConfigRequest(
            name=_check_str(model, "model"), version=_check_version(version)
        )
        return (await self._call(self._stub.ModelConfig, request, self._deadline(timeout))).config
