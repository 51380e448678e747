"""Limits: message size, rows per request, per-model queue, concurrent RPCs and streams.
Overload is answered RESOURCE_EXHAUSTED while the model is still busy, never queued
without bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Gate
from models import AFFINE_IO, Affine, write_model

from conveyor.client import Client, InvalidArgumentError
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.server import Server


def _request(rows: int, model: str = "gated") -> pb.ModelInferRequest:
    x = np.ones((rows, 4), np.float32)
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[rows, 4])],
        raw_input_contents=[x.tobytes()],
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for name in ("affine", "gated"):
        write_model(tmp_path, name, 1, Affine(), AFFINE_IO, max_batch_size=8)
    return tmp_path


def test_message_size_and_rows_per_request(repo: Path) -> None:
    server = Server(repo, port=0, max_message_bytes=64 * 1024, max_batch_size=4)
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(_request(4, "affine"), timeout=10).outputs[0].shape == [4, 4]
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_request(5, "affine"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "batch dim 5 is outside 1..4" in info.value.details()
        big = _request(4, "affine")
        big.raw_input_contents[0] = b"\0" * (128 * 1024)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(big, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ModelInfer(_request(1, "affine"), timeout=10).outputs  # still serving


def test_full_queue_is_refused_while_the_model_is_busy(repo: Path, gate: Gate) -> None:
    server = Server(repo, port=0, max_queue_size=2)
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        gate.armed = True
        running = stub.ModelInfer.future(_request(1), timeout=30)
        assert gate.entered.acquire(timeout=10)  # the worker is inside the model
        queued = [stub.ModelInfer.future(_request(1), timeout=30) for _ in range(2)]
        batcher = server.repository.get("gated").batcher  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while batcher.queued < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_request(1), timeout=30)
        # Answered while the model is still blocked: refused, not waiting for room.
        assert not gate.release.is_set()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in info.value.details()
        assert stub.ModelInfer(_request(1, "affine"), timeout=10).outputs  # other models fine
        gate.armed = False
        gate.release.set()
        for call in (running, *queued):
            assert call.result(timeout=20).outputs[0].shape == [1, 4]


def test_concurrent_rpcs_beyond_the_limit_are_refused(repo: Path, gate: Gate) -> None:
    server = Server(repo, port=0, max_concurrent_rpcs=2)
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        gate.armed = True
        calls = [stub.ModelInfer.future(_request(1), timeout=30)]
        assert gate.entered.acquire(timeout=10)
        calls.append(stub.ModelInfer.future(_request(1), timeout=30))
        batcher = server.repository.get("gated").batcher  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while batcher.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_request(1, "affine"), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.armed = False
        gate.release.set()
        for call in calls:
            assert call.result(timeout=20).outputs
        # The server frees the slots just after answering: allow it a moment.
        deadline = time.monotonic() + 10
        while True:
            try:
                assert stub.ModelInfer(_request(1, "affine"), timeout=10).outputs
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def test_probes_are_answered_while_the_rpc_limit_is_full(repo: Path, gate: Gate) -> None:
    # gRPC's own limit counted every call: with inference filling it, health Check,
    # ServerLive and ServerReady were refused RESOURCE_EXHAUSTED, so liveness probes
    # failed exactly when the server was busiest. An open stream holds a slot.
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = Server(repo, port=0, max_concurrent_rpcs=2)
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        gate.armed = True
        running = stub.ModelInfer.future(_request(1), timeout=30)
        assert gate.entered.acquire(timeout=10)
        done = threading.Event()

        def requests() -> Iterator[pb.ModelInferRequest]:
            yield _request(1, "affine")
            done.wait(30)  # the stream stays open, idle, as a client's between requests

        stream = stub.ModelStreamInfer(requests(), timeout=30)
        next(stream)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_request(1, "affine"), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-concurrent-rpcs" in info.value.details()
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="affine"), timeout=10).ready
        gate.armed = False
        gate.release.set()
        assert running.result(timeout=20).outputs
        done.set()
        stream.cancel()


def test_streams_per_connection_are_limited(repo: Path, gate: Gate) -> None:
    server = Server(repo, port=0, max_concurrent_streams=1)
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        gate.armed = True
        first = stub.ModelInfer.future(_request(1), timeout=30)
        assert gate.entered.acquire(timeout=10)
        second = stub.ModelInfer.future(_request(1), timeout=30)
        time.sleep(0.5)  # time for the second call to arrive, were it allowed to
        batcher = server.repository.get("gated").batcher  # type: ignore[union-attr]
        assert batcher.queued == 0 and not second.done()  # held back in the client
        gate.armed = False
        gate.release.set()
        assert first.result(timeout=20).outputs and second.result(timeout=20).outputs


def test_default_limits_are_bounded(repo: Path) -> None:
    from conveyor.engine import server as server_module
    from conveyor.engine.batcher import DEFAULT_EXECUTION_TIMEOUT

    with Server(repo, port=0) as server, Client(server.address, timeout=10) as client:
        batcher = server.repository.get("affine").batcher  # type: ignore[union-attr]
        assert batcher.batching.max_queue_size == 1024
        assert server_module.DEFAULT_MAX_MESSAGE_BYTES == 64 << 20
        assert 0 < server_module.DEFAULT_MAX_CONCURRENT_RPCS <= 4096
        assert 0 < DEFAULT_EXECUTION_TIMEOUT <= 60
        # Rows per request: the model's max_batch_size (or --max-batch-size).
        with pytest.raises(InvalidArgumentError, match=r"outside 1\.\.8"):
            client.infer("affine", np.zeros((9, 4), np.float32))
