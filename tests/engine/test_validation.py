"""Request validation never fails in any other way than a clear INVALID_ARGUMENT."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.engine.errors import InvalidArgument
from conveyor.engine.model_config import parse_config
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.tensors import decode_bytes, encode_bytes
from conveyor.engine.validation import RequestDecoder

CONFIG = parse_config(
    {
        "name": "m",
        "platform": "torchscript",
        "max_batch_size": 8,
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [3]},
            {"name": "cat", "datatype": "BYTES", "shape": [-1]},
            {"name": "n", "datatype": "INT64", "shape": [2, -1]},
        ],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
    },
    "test",
)
DECODER = RequestDecoder("m", CONFIG)
DATATYPES = ["FP32", "FP64", "INT64", "INT32", "BYTES", "BOOL", "FP16", "", "fp32"]
NAMES = ["x", "cat", "n", "z", ""]

tensor = st.builds(
    lambda name, dt, shape: pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=dt, shape=shape
    ),
    st.sampled_from(NAMES),
    st.sampled_from(DATATYPES),
    st.lists(st.integers(-3, 10) | st.sampled_from([2**31, 2**62, 2**63 - 1]), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(
    tensors=st.lists(tensor, max_size=4),
    raw=st.lists(st.binary(max_size=64), max_size=4),
    params=st.dictionaries(st.sampled_from(["priority", "timeout", "other"]), st.integers(-5, 9)),
)
def test_arbitrary_requests_decode_or_fail_cleanly(
    tensors: list[pb.ModelInferRequest.InferInputTensor],
    raw: list[bytes],
    params: dict[str, int],
) -> None:
    request = pb.ModelInferRequest(model_name="m", inputs=tensors, raw_input_contents=raw)
    for key, value in params.items():
        request.parameters[key].int64_param = value
    try:
        decoded = DECODER.decode(request)
    except InvalidArgument as exc:
        assert exc.message  # always says what is wrong
        return
    assert len(decoded.inputs) == 3
    assert all(len(a) == decoded.rows for a in decoded.inputs)


def test_a_valid_request_decodes_to_the_right_arrays() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    n = np.arange(8, dtype=np.int64).reshape(2, 2, 2)
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="n", datatype="INT64", shape=[2, 2, 2]),
            pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 3]),
            pb.ModelInferRequest.InferInputTensor(name="cat", datatype="BYTES", shape=[2, 1]),
        ],
        raw_input_contents=[n.tobytes(), x.tobytes(), encode_bytes(["a", "é"])],
    )
    decoded = DECODER.decode(request)
    np.testing.assert_array_equal(decoded.inputs[0], x)  # config order, not request order
    assert decoded.inputs[1].tolist() == [[b"a"], ["é".encode()]]
    np.testing.assert_array_equal(decoded.inputs[2], n)
    assert decoded.rows == 2


@pytest.mark.parametrize("shape", [[1, 0, 2**63 - 1], [1, 2**62, 0], [1, 0, 2**40]])
@pytest.mark.parametrize("typed", [False, True])
def test_an_empty_tensor_with_a_huge_dim_is_invalid_not_internal(shape: list[int], typed) -> None:
    # With no contents to check against, numpy's reshape raised "array is too big".
    config = parse_config(
        {
            "name": "v",
            "platform": "torchscript",
            "max_batch_size": 8,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
        },
        "test",
    )
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=shape)
    request = pb.ModelInferRequest(model_name="v", inputs=[tensor])
    if not typed:
        request.raw_input_contents.append(b"")
    with pytest.raises(InvalidArgument, match="too large for an empty tensor"):
        RequestDecoder("v", config).decode(request)


BYTES_ONLY = RequestDecoder(
    "b",
    parse_config(
        {
            "name": "b",
            "platform": "torchscript",
            "max_batch_size": 8,
            "inputs": [{"name": "cat", "datatype": "BYTES", "shape": [2]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
        },
        "test",
    ),
)


def _bytes_request(items: list[bytes], typed: bool) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="cat", datatype="BYTES", shape=[len(items) // 2, 2]
    )
    if typed:
        tensor.contents.bytes_contents.extend(items)
        return pb.ModelInferRequest(model_name="b", inputs=[tensor])
    return pb.ModelInferRequest(
        model_name="b", inputs=[tensor], raw_input_contents=[encode_bytes(items)]
    )


@pytest.mark.parametrize("typed", [False, True])
def test_bytes_that_are_not_utf8_are_refused_naming_input_and_element(typed: bool) -> None:
    # The model takes BYTES as List[str]: b"\xff\xfe" became U+FFFD twice, silently.
    good = ["café".encode(), b"x" * 200, b"", "日本".encode()]  # a 200-byte length is not ASCII
    decoded = BYTES_ONLY.decode(_bytes_request([*good], typed))
    assert decoded.inputs[0].tolist() == [good[:2], good[2:]]
    for bad in (b"\xff\xfe", b"caf\xe9", "é".encode()[:1], b"\xed\xa0\x80"):  # a surrogate
        with pytest.raises(InvalidArgument) as info:
            BYTES_ONLY.decode(_bytes_request([*good[:3], bad], typed))
        assert "input 'cat': BYTES element 3 (row-major) is not valid UTF-8" in info.value.message


@given(st.lists(st.binary(max_size=20), max_size=10))
def test_bytes_encoding_round_trips(items: list[bytes]) -> None:
    assert decode_bytes(encode_bytes(items), len(items)) == items


def test_a_bytes_count_off_the_shape_is_found_without_walking_the_rest() -> None:
    # 2 elements declared, 15 million empty ones sent (60 MB): the split walked them
    # all on the event loop (4 s here) before refusing the request.
    flood = b"\x00\x00\x00\x00" * 15_000_000
    with pytest.raises(ValueError, match="holds more than 2 elements, shape needs 2"):
        decode_bytes(flood, 2)
    # Nothing past the declared count is read: a broken length prefix there (which
    # the full walk reported) is not reached.
    with pytest.raises(ValueError, match="holds more than 2 elements"):
        decode_bytes(encode_bytes(["a", "b", "c"]) + b"\xff\xff\xff\x7f", 2)
    with pytest.raises(ValueError, match="holds 1 elements, shape needs 3"):
        decode_bytes(encode_bytes(["ab"]), 3)
    assert decode_bytes(encode_bytes(["a", ""]), 2) == [b"a", b""]


def test_truncated_bytes_are_rejected() -> None:
    with pytest.raises(ValueError, match="truncated"):
        decode_bytes(b"\x01\x00")


@pytest.mark.parametrize("item", [7, True, None, 1.5])
def test_encode_bytes_refuses_what_is_not_bytes_or_str(item: object) -> None:
    # bytes(7) is seven zero bytes: an int must never be encoded through bytes()
    with pytest.raises(TypeError, match="BYTES element 1: expected bytes or str"):
        encode_bytes([b"ok", item])  # type: ignore[list-item]
    assert decode_bytes(encode_bytes([bytearray(b"ab"), "é"])) == [b"ab", "é".encode()]


ONE_INPUT = RequestDecoder(
    "m",
    parse_config(
        {
            "name": "m",
            "platform": "torchscript",
            "max_batch_size": 8,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [3]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
        },
        "test",
    ),
)


def _with_output(**parameters: object) -> pb.ModelInferRequest:
    x = np.zeros((1, 3), np.float32)
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    out = request.outputs.add(name="y")
    for key, value in parameters.items():
        if isinstance(value, int):
            out.parameters[key].int64_param = value
        else:
            out.parameters[key].string_param = str(value)
    return request


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"classification": 1}, r"'classification' \(class_count 1, Triton's .* not supported"),
        ({"classification": -5}, r"'classification' \(class_count\) must be >= 0, got -5"),
        ({"classification": "2"}, r"'classification' \(class_count\) must be an integer"),
        ({"top_k": 3}, r"unknown parameter 'top_k'"),
    ],
)
def test_output_parameters_are_applied_or_refused(parameters: dict, message: str) -> None:
    # tritonclient's InferRequestedOutput("y", class_count=1) got the raw FP32 output back,
    # and class_count=-5 was accepted: output parameters were never read
    with pytest.raises(InvalidArgument, match=f"^requested output 'y': .*{message}"):
        ONE_INPUT.decode(_with_output(**parameters))
    ONE_INPUT.decode(_with_output(classification=0))  # 0: no classification, as in Triton


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("shared_memory_region", r"shared memory \(Triton's extension\) is not supported"),
        ("shared_memory_byte_size", "shared memory"),
        ("binary_data_size", r"unknown parameter 'binary_data_size' \(none is supported\)"),
    ],
)
def test_input_parameters_are_refused_by_name(key: str, message: str) -> None:
    # tritonclient's set_shared_memory() got "contents.fp32_contents holds 0 values; shape
    # [1, 4] needs 4", blaming the contents it had rightly left out
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    tensor.parameters[key].string_param = "region"
    with pytest.raises(InvalidArgument, match=f"^input 'x': .*{message}"):
        ONE_INPUT.decode(request)
