"""An embedded server on a test repository, and the calls the engine tests make of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from conveyor.engine.model import Model
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


class HeldStart:
    """A ``Server(repo, port=0, **kw)`` started in a thread and held in its first model's
    warm-up: gRPC serves, the server is not ready yet. :meth:`finish` lets the load go on
    and waits for the start; :meth:`close` stops the server (safe at any point).

    Model.warm_up is patched through ``monkeypatch`` for the test's duration."""

    def __init__(self, repo: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> None:
        self.loading, self._release = threading.Event(), threading.Event()
        warm_up = Model.warm_up

        def held(model: Model) -> None:
            self.loading.set()
            if not self._release.wait(60):
                raise TimeoutError("the test never released the load")
            warm_up(model)

        monkeypatch.setattr(Model, "warm_up", held)
        self.server = Server(repo, port=0, **kw)  # type: ignore[arg-type]
        self._starter = threading.Thread(target=self.server.start, name="test-start")
        self._starter.start()
        if not self.loading.wait(60):
            self.close()
            raise AssertionError("the first load never reached warm-up")

    def finish(self) -> None:
        self._release.set()
        self._starter.join(60)
        assert self.server.servicer is not None and self.server.servicer.ready

    def close(self) -> None:
        self._release.set()
        self._starter.join(60)
        self.server.stop()
