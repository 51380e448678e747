"""Hypothesis strategies for hostile ModelInferRequest messages, as wire bytes.

Shared by tests/reliability/test_fuzz.py (a bounded run in CI) and
benchmarks/fuzz_serve.py (a long run). The messages cover wrong datatypes,
shapes that overflow (products beyond int64), raw contents of the wrong length,
missing fields, huge dims, unknown and mistyped parameters, and non-UTF-8
names; then some are mutated at the byte level (truncated, bytes flipped,
junk fields appended).
"""

from __future__ import annotations

import grpc
from hypothesis import strategies as st

from conveyor.engine.protos import grpc_service_pb2 as pb

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16", "", "fp32", "FP32 ", "\u00e9"]  # fmt: skip
MODELS = ["affine", "vocab", "", "missing", "affine/../x", "../../etc/passwd"]
DIMS = st.one_of(
    st.integers(-3, 10),
    st.sampled_from([2**31, 2**32 + 4, 2**62, 2**63 - 1, -(2**63)]),
)
# Status codes a hostile request may get; anything else (UNKNOWN, a crash) is a bug.
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,  # only the model's own error (Affine raises below -1000)
}


def _parameter(draw: st.DrawFn, target: object, key: str) -> None:
    kind = draw(st.sampled_from(["bool", "int", "uint", "str", "double", "none"]))
    p = target.parameters[key]  # type: ignore[attr-defined]
    if kind == "bool":
        p.bool_param = draw(st.booleans())
    elif kind == "int":
        p.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "uint":
        p.uint64_param = draw(st.integers(0, 2**64 - 1))
    elif kind == "str":
        p.string_param = draw(st.text(max_size=8))
    elif kind == "double":
        p.double_param = draw(st.floats(allow_nan=True))
    else:
        p.SetInParent()


@st.composite
def tensor(draw: st.DrawFn) -> pb.ModelInferRequest.InferInputTensor:
    t = pb.ModelInferRequest.InferInputTensor(
        name=draw(st.sampled_from(["x", "colour", "y", "", "x\u0000"])),
        datatype=draw(st.sampled_from(DATATYPES)),
        shape=draw(st.lists(DIMS, max_size=5)),
    )
    contents = draw(st.sampled_from(["none", "fp32", "int64", "bytes", "bool"]))
    if contents == "fp32":
        t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=12)))
    elif contents == "int64":
        t.contents.int64_contents.extend(
            draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12))
        )
    elif contents == "bytes":
        t.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=6)))
    elif contents == "bool":
        t.contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=12)))
    for key in draw(st.lists(st.sampled_from(["binary_data_size", "zz"]), max_size=2)):
        _parameter(draw, t, key)
    return t


@st.composite
def request_bytes(draw: st.DrawFn) -> bytes:
    """One serialized, possibly malformed, ModelInferRequest."""
    inputs = draw(st.lists(tensor(), max_size=3))
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(MODELS)),
        model_version=draw(st.sampled_from(["", "1", "2", "0", "-1", "x", "99999999999999999999"])),
        id=draw(st.text(max_size=6)),
        inputs=inputs,
    )
    raw = draw(st.sampled_from(["none", "exact", "random", "short"]))
    for t in inputs:
        if raw == "none":
            break
        if raw == "random":
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            n = 1
            for d in t.shape:
                n *= max(d, 0)
            size = min(n * 4, 4096) - (1 if raw == "short" else 0)
            request.raw_input_contents.append(b"\1" * max(size, 0))
    for name in draw(st.lists(st.sampled_from(["y", "total", "nope", ""]), max_size=3)):
        request.outputs.add(name=name)
    for key in draw(st.lists(st.sampled_from(["priority", "timeout", "sequence_id", "x"]))):
        _parameter(draw, request, key)
    data = request.SerializeToString()
    mutation = draw(st.sampled_from(["none", "none", "utf8", "truncate", "flip", "junk"]))
    if mutation == "utf8":  # a model name, then a tensor name, that are not UTF-8
        bad = draw(st.binary(min_size=1, max_size=6).map(lambda b: b"\xff" + b))
        inner = b"\x0a" + bytes([len(bad)]) + bad
        data = b"\x0a" + bytes([len(bad)]) + bad + data + b"\x2a" + bytes([len(inner)]) + inner
    elif mutation == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mutation == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    elif mutation == "junk":
        data += draw(st.binary(min_size=1, max_size=32))
    return data
