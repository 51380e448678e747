"""Hostile ModelInferRequest messages (see fuzz_requests.py) against a live server: each is
answered, with a status from an allowed set and a message, and the server neither crashes,
hangs, nor keeps threads or queued requests. A bounded run; benchmarks/fuzz_serve.py is long."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from fuzz_requests import ALLOWED, request_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import AFFINE_IO, VOCAB_IO, Affine, Vocab, write_model

from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.server import Server

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
THREADS_AT_START: list[int] = []


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, grpc.Channel]]:
    root = tmp_path_factory.mktemp("fuzz")
    write_model(root, "affine", 1, Affine(), AFFINE_IO, max_batch_size=8)
    write_model(root, "vocab", 1, Vocab(), VOCAB_IO, max_batch_size=8)
    server = Server(root, port=0, max_message_bytes=1 << 20)
    with server, grpc.insecure_channel(server.address) as channel:
        THREADS_AT_START.append(threading.active_count())
        yield server, channel


def _check(served: tuple[Server, grpc.Channel], data: bytes) -> None:
    _, channel = served
    infer = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    try:
        infer(data, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        assert exc.details()


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=request_bytes())
def test_hostile_requests_get_a_clear_status(
    served: tuple[Server, grpc.Channel], data: bytes
) -> None:
    _check(served, data)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(request_bytes(), min_size=1, max_size=8))
def test_hostile_streams_answer_or_end_with_a_status(
    served: tuple[Server, grpc.Channel], batch: list[bytes]
) -> None:
    _, channel = served
    stream = channel.stream_stream(
        STREAM,
        request_serializer=None,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    try:
        replies = list(stream(iter(batch), timeout=10))
    except grpc.RpcError as exc:  # an unparsable message ends the stream
        assert exc.code() in ALLOWED and exc.details(), (exc.code(), exc.details())
        return
    assert len(replies) == len(batch)
    assert all(r.error_message or r.infer_response.outputs for r in replies)


def test_server_is_intact_after_fuzzing(served: tuple[Server, grpc.Channel]) -> None:
    server, channel = served
    for n in range(64):  # plain garbage too
        _check(served, bytes((i * 37 + n) % 256 for i in range(n)))
    ok = pb.ModelInferRequest(
        model_name="affine",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[b"\0" * 16],
    )
    infer = channel.unary_unary(
        INFER,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    assert infer(ok, timeout=10).outputs[0].shape == [1, 4]
    repo = server.repository
    assert repo is not None
    assert all(v.batcher.queued == 0 for e in repo.models.values() for v in e.versions.values())
    # No thread left behind by the hostile requests (gRPC may keep one spare poller).
    assert threading.active_count() <= THREADS_AT_START[0] + 1
