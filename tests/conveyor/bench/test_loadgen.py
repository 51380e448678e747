"""The load generator against an in-process server: both loops, several processes, errors."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np
import pytest

from conveyor.bench import payloads
from conveyor.bench.loadgen import LoadError, LoadSpec, LoadSpecError, run_load
from conveyor.bench.report import point_line
from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.server import Server
from conveyor.errors import ConveyorError


def good_payloads(server: Server, rows: int = 2) -> tuple[bytes, ...]:
    info = payloads.model_info(server.address, "double")
    return payloads.build_payloads(info, payloads.random_inputs(info, rows * 4), rows)


def wrong_datatype() -> bytes:
    """x sent as INT32: the server must answer INVALID_ARGUMENT."""
    return pb.ModelInferRequest(
        model_name="double",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[1, 3])],
        raw_input_contents=[np.zeros(3, np.int32).tobytes()],
    ).SerializeToString()


def spec(server: Server, bodies: tuple[bytes, ...], **load: object) -> LoadSpec:
    return LoadSpec(
        target=server.address, payloads=bodies, rows=2, duration=0.6, warmup=0.2, timeout=5,
        **load,
    )  # fmt: skip


def test_closed_loop(server: Server) -> None:
    result = run_load(spec(server, good_payloads(server), concurrency=4), progress=False)
    s = result.summary()
    assert s["mode"] == "closed" and s["procs"] == 1
    assert s["requests"] > 20 and s["errors"] == 0
    assert s["rows_s"] == pytest.approx(2 * s["requests_s"])
    assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"]
    assert s["client_cpu_s"] > 0


def test_open_loop_poisson_rate(server: Server) -> None:
    result = run_load(spec(server, good_payloads(server), rate=300.0), progress=False)
    s = result.summary()
    assert s["mode"] == "open" and s["target_rate"] == 300.0
    # 180 arrivals expected in 0.6 s; Poisson sd ~13: a wide band that still catches a wrong rate.
    assert 100 < s["offered_s"] * 0.6 < 260
    assert s["errors"] == 0 and s["requests"] == round(s["offered_s"] * 0.6)
    assert s["client_lag_mean_ms"] >= 0


def test_two_processes(server: Server) -> None:
    s = run_load(spec(server, good_payloads(server), concurrency=4, procs=2)).summary()
    assert s["procs"] == 2 and s["requests"] > 20 and s["errors"] == 0


@pytest.mark.parametrize("rate", [None, 400.0])
def test_connections_are_separate_and_all_used(rate: float | None) -> None:
    # A server of N processes on one port (SO_REUSEPORT) is spread by connection: channels
    # to one target shared one connection, so --workers 2 was measured as one process.
    import threading
    from concurrent import futures

    import grpc

    from conveyor.bench.loadgen import INFER_METHOD

    peers: dict[str, int] = {}
    lock = threading.Lock()

    def infer(request: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            peers[context.peer()] = peers.get(context.peer(), 0) + 1
        return b""

    service, method = INFER_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(infer)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        load = {"concurrency": 4} if rate is None else {"rate": rate}
        s = run_load(
            LoadSpec(
                target=f"127.0.0.1:{port}",
                payloads=(b"x",),
                duration=0.5,
                warmup=0.1,
                timeout=5,
                connections=3,
                **load,
            ),
            progress=False,
        ).summary()
    finally:
        server.stop(None)
    assert s["errors"] == 0 and s["connections"] == 3
    assert len(peers) == 3  # three client ports: three connections
    assert min(peers.values()) >= 0.1 * max(peers.values())  # each one carried requests


def test_errors_counted_by_code(server: Server) -> None:
    bodies = (*good_payloads(server), wrong_datatype())
    s = run_load(spec(server, bodies, concurrency=2), progress=False).summary()
    codes = s["error_codes"]
    assert set(codes) == {"INVALID_ARGUMENT"} and codes["INVALID_ARGUMENT"] > 0
    assert s["errors"] == codes["INVALID_ARGUMENT"]
    # One request in five is bad and the workers take them in turn.
    assert s["requests"] == pytest.approx(4 * s["errors"], rel=0.2)


def test_no_server_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    load = LoadSpec(
        target=f"127.0.0.1:{port}", payloads=(b"",), concurrency=1, duration=0.1,
        connect_timeout=0.5,
    )  # fmt: skip
    with pytest.raises(LoadError, match="cannot connect"):
        run_load(load, progress=False)


def test_spec_checks() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LoadSpec(target="x:1", payloads=(b"",), concurrency=1, rate=5.0)
    with pytest.raises(ValueError, match="payloads"):
        LoadSpec(target="x:1", payloads=(), concurrency=1)
    # Out-of-range settings: a ConveyorError (one line on the CLI) that is still a ValueError.
    for bad, message in (
        ({"rows": 0}, "rows must be >= 1"),
        ({"duration": float("nan")}, "duration must be > 0"),
        ({"warmup": -1.0}, "warmup must be >= 0"),
        ({"procs": 0}, "procs must be >= 1"),
        ({"connections": 0}, "connections must be >= 1"),
        ({"timeout": 0.0}, "timeout must be > 0"),
        ({"connect_timeout": float("inf")}, "connect_timeout must be > 0"),
        # An infinite rate would spin the open loop without ever yielding.
        ({"concurrency": None, "rate": float("inf")}, "rate must be finite"),
        ({"concurrency": None, "rate": float("nan")}, "rate must be finite"),
    ):
        with pytest.raises(LoadSpecError, match=message) as raised:
            LoadSpec(**{"target": "x:1", "payloads": (b"",), "concurrency": 1, **bad})
        assert isinstance(raised.value, ConveyorError) and isinstance(raised.value, ValueError)
    assert LoadSpec(target="x:1", payloads=(b"",), concurrency=5, procs=2).shares() == [
        (3, 0.0),
        (2, 0.0),
    ]


def test_saturated_open_loop_reads_its_cpu_over_the_real_window(server: Server) -> None:
    # Far more arrivals than one client process can issue: the open loop is behind its
    # schedule all the time. It never yielded then, so the CPU window was read after the
    # schedule had run out (client_cpu_s near 0 for a process busy the whole window), and
    # offered_s read the target however few requests left the client.
    load = LoadSpec(
        target=server.address, payloads=good_payloads(server), rows=2, rate=1e6, duration=1.0,
        warmup=0.1, timeout=5, max_outstanding=50,
    )  # fmt: skip
    s = run_load(load, progress=False).summary()
    backlog = s["error_codes"]["CLIENT_BACKLOG"]
    assert backlog > 0 and s["sent_s"] == pytest.approx(s["offered_s"] - backlog / 1.0)
    assert s["sent_s"] < 0.5 * s["offered_s"]  # the shortfall shows, in the point's line too
    assert f"client sent {s['sent_s']:,.0f} of {s['offered_s']:,.0f} offered/s" in point_line(s)
    # Busy for the whole second: at least a tenth of a core even on a loaded machine (the late
    # reading gave a few milliseconds, the CPU of starting the 50 outstanding sends).
    assert s["client_cpu_s"] > 0.1


@contextlib.contextmanager
def _slow_server(seconds: float, threads: int) -> Iterator[str]:
    """A bare gRPC server on loopback whose every ModelInfer answer takes ``seconds``,
    ``threads`` at a time; yields its address."""
    from concurrent import futures

    import grpc

    from conveyor.bench.loadgen import INFER_METHOD

    def infer(request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(seconds)
        return b""

    service, method = INFER_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(infer)}
    )
    slow = grpc.server(futures.ThreadPoolExecutor(threads), handlers=[handler])
    port = slow.add_insecure_port("127.0.0.1:0")
    slow.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        slow.stop(None)


def test_server_slower_than_the_window_is_reported_not_silent() -> None:
    # Every answer takes 1 s; warm-up + duration is 0.4 s: the requests sent during warm-up
    # are still in flight when the window ends and none is sent inside it. That read as
    # 0 requests, 0 errors and no latency, like a server nobody loaded.
    with _slow_server(1.0, 4) as target:
        load = LoadSpec(
            target=target, payloads=(b"x",), concurrency=3, duration=0.3, warmup=0.1, timeout=5
        )
        s = run_load(load, progress=False).summary()
    assert s["requests"] == 0 and s["errors"] == 0
    assert s["warmup_requests_past_window"] == 3
    assert "WARNING: no request sent in the measured window finished; 3 sent in warm-up" in (
        point_line(s)
    )


def test_on_window_is_called_when_the_window_starts_and_ends(server: Server) -> None:
    import time

    calls: list[tuple[str, float]] = []
    load = spec(server, good_payloads(server), concurrency=2)  # 0.2 s warm-up, 0.6 s window
    result = run_load(
        load, progress=False, on_window=lambda e: calls.append((e, time.perf_counter()))
    )
    assert [edge for edge, _ in calls] == ["start", "end"]
    (_, start), (_, end) = calls
    assert result.started + load.warmup <= start < end
    assert end >= result.started + load.warmup + load.duration


def test_an_open_loop_past_saturation_reports_what_was_answered() -> None:
    # A server that answers 40 requests/s, offered 200/s: the measured requests are all
    # answered, late, after the window, and counting them over the window reported about
    # 200 req/s -- the offered rate, not the server's.
    with _slow_server(0.05, 2) as target:
        load = LoadSpec(
            target=target, payloads=(b"x",), rate=200.0, duration=0.5, warmup=0.1, timeout=10
        )
        s = run_load(load, progress=False).summary()
    assert s["errors"] == 0 and s["offered_s"] > 120
    assert s["requests"] == round(s["offered_s"] * 0.5)  # every one answered, eventually
    assert s["requests_s"] <= 45  # at most the server's 40/s (+ a request's rounding)
