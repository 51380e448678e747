"""An embedded server on a test repository, and the calls the repository tests make of it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.server import Server

POLL = 0.1  # seconds between repository scans, unless a test sets poll_interval
Stub = pb_grpc.GRPCInferenceServiceStub


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` (bounded in time) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def serve(repo: Path, **kw: object) -> tuple[Server, grpc.Channel, Stub]:
    """A started ``Server(repo, port=0, poll_interval=POLL, **kw)``, a channel and a stub."""
    kw.setdefault("poll_interval", POLL)
    server = Server(repo, port=0, **kw).start()  # type: ignore[arg-type]
    channel = grpc.insecure_channel(server.address)
    return server, channel, Stub(channel)


def infer(stub: Stub, model: str, version: str = "", rows: int = 1) -> float:
    """The first output value for ``rows`` rows of one FP32 zero (models.VERSION_IO)."""
    request = pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[rows, 1])],
        raw_input_contents=[np.zeros(rows, np.float32).tobytes()],
    )
    resp = stub.ModelInfer(request, timeout=10)
    return float(np.frombuffer(resp.raw_output_contents[0], np.float32)[0])
