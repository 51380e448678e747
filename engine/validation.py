"""Check a ModelInferRequest against the model's metadata and turn it into arrays.

Every problem is an :class:`~conveyor.engine.errors.InvalidArgument` whose
message names the tensor (or parameter) and says what is wrong. Numeric raw
contents become zero-copy ``np.frombuffer`` views; nothing is walked per
element except BYTES strings and typed contents. BYTES elements must be UTF-8 (the
model gets them as ``List[str]``): checked with one ``isascii`` pass over the contents,
element by element only when that finds a byte above 127.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from conveyor.engine.errors import InvalidArgument
from conveyor.engine.model_config import ModelConfig, TensorSpec
from conveyor.engine.tensors import CONTENTS_FIELD, NUMPY_DTYPES, decode_bytes

# An empty tensor's other dims, multiplied: beyond this a shape is refused. A tensor
# with contents is bounded by the message size already.
_MAX_EMPTY_EXTENT = 2**31


@dataclass(frozen=True, slots=True)
class _Input:
    index: int
    spec: TensorSpec
    dtype: np.dtype | None  # None for BYTES
    fixed: bool  # no -1 dims: the inner shape is known without looking at the request


@dataclass(frozen=True, slots=True)
class Decoded:
    """A checked request: arrays in config input order, its rows and requested output indices."""

    inputs: list[np.ndarray]
    rows: int
    outputs: tuple[int, ...]
    priority: int
    timeout_us: int | None


class RequestDecoder:
    """Per-model-version lookup tables, built once at load, used for every request."""

    def __init__(self, model: str, config: ModelConfig) -> None:
        self.model = model
        self.config = config
        self._inputs = {
            spec.name: _Input(i, spec, NUMPY_DTYPES.get(spec.datatype), -1 not in spec.shape)
            for i, spec in enumerate(config.inputs)
        }
        self._outputs = {spec.name: i for i, spec in enumerate(config.outputs)}
        self._all_outputs = tuple(range(len(config.outputs)))
        self._names = ", ".join(repr(s.name) for s in config.inputs)

    def decode(self, request: object) -> Decoded:
        """Check ``request`` (a ModelInferRequest) and return its arrays."""
        tensors = request.inputs  # type: ignore[attr-defined]
        raw = request.raw_input_contents  # type: ignore[attr-defined]
        n = len(self._inputs)
        if len(tensors) != n:
            raise InvalidArgument(
                f"model {self.model!r} expects {n} input(s) ({self._names}), got {len(tensors)}"
            )
        if raw and len(raw) != len(tensors):
            raise InvalidArgument(
                f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs "
                "(one per input, in order)"
            )
        arrays: list[np.ndarray | None] = [None] * n
        rows = -1
        max_batch = self.config.max_batch_size
        for i, tensor in enumerate(tensors):
            name = tensor.name
            entry = self._inputs.get(name)
            if entry is None:
                raise InvalidArgument(
                    f"unexpected input {name!r}: model {self.model!r} has inputs {self._names}"
                )
            if arrays[entry.index] is not None:
                raise InvalidArgument(f"input {name!r} given twice")
            if tensor.parameters:  # rare: requests without input parameters skip this
                _check_input_parameters(tensor)
            spec = entry.spec
            if tensor.datatype != spec.datatype:
                raise InvalidArgument(
                    f"input {name!r}: datatype {tensor.datatype or '(empty)'} does not match "
                    f"the model's {spec.datatype}"
                )
            shape = tuple(tensor.shape)
            if len(shape) != len(spec.shape) + 1:
                raise InvalidArgument(
                    f"input {name!r}: shape {list(shape)} should be [batch, "
                    f"{', '.join(map(str, spec.shape))}] ({len(spec.shape) + 1} dims)"
                )
            batch = shape[0]
            if not 1 <= batch <= max_batch:
                raise InvalidArgument(
                    f"input {name!r}: batch dim {batch} is outside 1..{max_batch} "
                    "(the model's max_batch_size)"
                )
            if rows == -1:
                rows = batch
            elif batch != rows:
                raise InvalidArgument(
                    f"input {name!r}: batch dim {batch} differs from the other inputs' {rows}"
                )
            if entry.fixed:
                if shape[1:] != spec.shape:
                    raise InvalidArgument(
                        f"input {name!r}: shape {list(shape)} does not match "
                        f"[batch, {', '.join(map(str, spec.shape))}]"
                    )
            else:
                for got, want in zip(shape[1:], spec.shape, strict=True):
                    if got < 0 or (want != -1 and got != want):
                        raise InvalidArgument(
                            f"input {name!r}: shape {list(shape)} does not match "
                            f"[batch, {', '.join(map(str, spec.shape))}] (-1 = any)"
                        )
            count = math.prod(shape)
            if count == 0 and math.prod(d for d in shape if d) > _MAX_EMPTY_EXTENT:
                # No contents to check against: [1, 0, 2**63 - 1] would reach numpy's
                # reshape ("array is too big", an INTERNAL with a traceback in the log).
                raise InvalidArgument(
                    f"input {name!r}: shape {list(shape)} is too large for an empty tensor"
                )
            if raw:
                if tensor.HasField("contents"):  # Triton refuses both; one would be dropped
                    raise InvalidArgument(
                        f"input {name!r}: contents field must not be specified when using "
                        f"raw_input_contents for {name!r} for model {self.model!r}"
                    )
                arrays[entry.index] = self._from_raw(name, raw[i], entry, shape, count)
            else:
                arrays[entry.index] = self._from_typed(name, tensor, entry, shape, count)
        outputs = self._requested(request)
        priority, timeout_us = _parameters(request)
        return Decoded(arrays, rows, outputs, priority, timeout_us)  # type: ignore[arg-type]

    @staticmethod
    def _from_raw(
        name: str, buf: bytes, entry: _Input, shape: tuple[int, ...], count: int
    ) -> np.ndarray:
        if entry.dtype is None:
            try:
                items = decode_bytes(buf, count)
            except ValueError as exc:
                raise InvalidArgument(f"input {name!r}: BYTES raw contents {exc}") from None
            if not buf.isascii():  # one C pass; ASCII strings and short lengths are ASCII
                _check_utf8(name, items)
            return np.array(items, dtype=object).reshape(shape)
        need = count * entry.dtype.itemsize
        if len(buf) != need:
            raise InvalidArgument(
                f"input {name!r}: raw contents hold {len(buf)} bytes; shape {list(shape)} of "
                f"{entry.spec.datatype} needs {need}"
            )
        return np.frombuffer(buf, dtype=entry.dtype).reshape(shape)

    @staticmethod
    def _from_typed(
        name: str, tensor: object, entry: _Input, shape: tuple[int, ...], count: int
    ) -> np.ndarray:
        datatype = entry.spec.datatype
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            raise InvalidArgument(f"input {name!r}: {datatype} has no typed contents; send it raw")
        values = getattr(tensor.contents, field)  # type: ignore[attr-defined]
        if len(values) != count:
            raise InvalidArgument(
                f"input {name!r}: contents.{field} holds {len(values)} values; shape "
                f"{list(shape)} needs {count}"
            )
        if entry.dtype is None:
            items = list(values)
            if not b"".join(items).isascii():
                _check_utf8(name, items)
            return np.array(items, dtype=object).reshape(shape)
        try:
            return np.array(values, dtype=entry.dtype).reshape(shape)
        except OverflowError:
            raise InvalidArgument(
                f"input {name!r}: contents.{field} has values out of range for {datatype}"
            ) from None

    def _requested(self, request: object) -> tuple[int, ...]:
        wanted = request.outputs  # type: ignore[attr-defined]
        if not wanted:
            return self._all_outputs
        indices = []
        for out in wanted:
            index = self._outputs.get(out.name)
            if index is None:
                names = ", ".join(map(repr, self._outputs))
                raise InvalidArgument(
                    f"requested output {out.name!r}: model {self.model!r} has outputs {names}"
                )
            if index in indices:  # Triton's words; it was answered twice
                raise InvalidArgument(f"output {out.name!r} already requested")
            if out.parameters:  # rare: requests without output parameters skip this
                _check_output_parameters(out)
            indices.append(index)
        return tuple(indices)


def _check_utf8(name: str, items: list[bytes]) -> None:
    """Refuse a BYTES element that is not UTF-8: the model takes the tensor as strings
    (``List[str]``), and replacing the bytes (U+FFFD) would run it on other values than
    were sent (a vocabulary lookup would find the out-of-vocabulary id, silently)."""
    for k, item in enumerate(items):
        if item.isascii():
            continue
        try:
            item.decode()
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"input {name!r}: BYTES element {k} (row-major) is not valid UTF-8 "
                f"({exc.reason} at byte {exc.start}); the model takes strings"
            ) from None


def _check_input_parameters(tensor: object) -> None:
    """Refuse input parameters: none is applied here. Shared-memory inputs (Triton's
    extension, which ServerMetadata does not list) were refused as "contents holds 0
    values", blaming the contents the client had rightly left out."""
    name = tensor.name  # type: ignore[attr-defined]
    for key in tensor.parameters:  # type: ignore[attr-defined]
        if key.startswith("shared_memory"):
            raise InvalidArgument(
                f"input {name!r}: parameter {key!r}: shared memory (Triton's extension) is "
                "not supported by this server; send the tensor in the request"
            )
        raise InvalidArgument(f"input {name!r}: unknown parameter {key!r} (none is supported)")


def _check_output_parameters(out: object) -> None:
    """Refuse output parameters this server does not apply: tritonclient's ``class_count``
    (Triton's classification extension, sent as ``classification``) returned the raw output
    without a word. ``classification`` 0 means no classification, as in Triton."""
    name = out.name  # type: ignore[attr-defined]
    for key, param in out.parameters.items():  # type: ignore[attr-defined]
        if key != "classification":
            raise InvalidArgument(
                f"requested output {name!r}: unknown parameter {key!r} "
                "(output parameters supported: classification)"
            )
        kind = param.WhichOneof("parameter_choice")
        if kind not in ("int64_param", "uint64_param"):
            raise InvalidArgument(
                f"requested output {name!r}: parameter 'classification' (class_count) must "
                f"be an integer, got {kind or 'nothing'}"
            )
        count = getattr(param, kind)
        if count < 0:
            raise InvalidArgument(
                f"requested output {name!r}: parameter 'classification' (class_count) must "
                f"be >= 0, got {count}"
            )
        if count:
            raise InvalidArgument(
                f"requested output {name!r}: parameter 'classification' (class_count "
                f"{count}, Triton's classification extension) is not supported by this "
                "server; request the raw output and take the top classes from it"
            )


def _int_param(request: object, key: str) -> int | None:
    params = request.parameters  # type: ignore[attr-defined]
    if key not in params:
        return None
    param = params[key]
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidArgument(f"parameter {key!r}: expected an integer, got {kind or 'nothing'}")
    value = getattr(param, kind)
    if value < 0:
        raise InvalidArgument(f"parameter {key!r}: must be >= 0, got {value}")
    return value


def _parameters(request: object) -> tuple[int, int | None]:
    if not request.parameters:  # type: ignore[attr-defined]
        return 0, None
    # timeout 0 means "no timeout" (Triton's queue policy only overrides for non-zero).
    return _int_param(request, "priority") or 0, _int_param(request, "timeout") or None
