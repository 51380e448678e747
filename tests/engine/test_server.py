"""The embedded Server and `conveyor serve`: ports, deadlines, cancellation, drain, signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cli_server import FAULTHANDLER_ENV, start_cli_server, stop_cli_server, wait_serving
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import VERSION_IO, Version, Widen, write_model
from served_repository import HeldStart, wait_until

from conveyor.engine.protos import grpc_service_pb2 as pb
from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc
from conveyor.engine.server import SERVICE_NAME, Server, ServerError


def _request(value: float, **kw: object) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="m",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
        raw_input_contents=[np.full(1, value, np.float32).tobytes()],
        **kw,
    )


class Gate:
    """Wraps a batcher's run: blocks until released and records the values it computed."""

    def __init__(self, server: Server) -> None:
        self.batcher = server.repository.models["m"].versions[1].batcher  # type: ignore[union-attr]
        self.original = self.batcher._run
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[float] = []
        self.batcher._run = self

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self.entered.set()
        assert self.release.wait(10)
        self.seen.extend(float(v) for v in inputs[0].ravel())
        return self.original(inputs)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_model(tmp_path, "m", 1, Version(1), VERSION_IO, dynamic_batching={"max_queue_size": 2})
    return tmp_path


def test_port_zero_reports_the_port_and_a_used_port_fails_loudly(
    repo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with Server(repo, port=0) as first:
        assert first.port and first.port > 0 and first.address == f"127.0.0.1:{first.port}"
        capfd.readouterr()
        with pytest.raises(ServerError, match=f"cannot bind .*: port {first.port} is in use"):
            Server(repo, port=first.port).start()
        # gRPC never tried (the probe found the port taken), so its native error line
        # ("E... add_port.cc:83] Failed to add port to server") is not on stderr.
        assert "add_port" not in capfd.readouterr().err


def test_a_failed_start_frees_its_ports_and_a_server_runs_once(repo: Path) -> None:
    # The metrics port is taken: the start fails, and the gRPC port it had bound stayed
    # held, so the retry on it failed too.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(ServerError, match="metrics port"):
            Server(repo, port=port, metrics_port=busy).start()
    with Server(repo, port=port, metrics_port=0) as again:
        assert again.port == port
    # A second start returned at once with the first run's address while another run
    # bound a new port behind it.
    with pytest.raises(ServerError, match="a Server runs once"):
        again.start()


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="not a directory"):
        Server(tmp_path / "nope", port=0).start()


def test_grpc_deadline_while_queued_is_never_computed(repo: Path) -> None:
    with Server(repo, port=0) as server, grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        gate = Gate(server)
        blocker = stub.ModelInfer.future(_request(1.0), timeout=10)
        assert gate.entered.wait(10)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_request(7.0), timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The per-request "timeout" parameter (microseconds) works the same way.
        late = _request(8.0)
        late.parameters["timeout"].int64_param = 100_000
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(late, timeout=10)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "not computed" in info.value.details()
        # timeout 0 is "no timeout" (as in Triton), not a deadline of now.
        unbounded = _request(3.0)
        unbounded.parameters["timeout"].int64_param = 0
        waiting = stub.ModelInfer.future(unbounded, timeout=10)
        gate.release.set()
        blocker.result(timeout=10)
        waiting.result(timeout=10)
        assert stub.ModelInfer(_request(2.0), timeout=10)
        assert 7.0 not in gate.seen and 8.0 not in gate.seen
        assert {1.0, 2.0, 3.0} <= set(gate.seen)


def test_cancelled_call_leaves_the_queue_and_full_queue_is_resource_exhausted(repo: Path) -> None:
    with Server(repo, port=0) as server, grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        gate = Gate(server)
        blocker = stub.ModelInfer.future(_request(1.0), timeout=10)
        assert gate.entered.wait(10)
        victim = stub.ModelInfer.future(_request(9.0), timeout=10)
        queued = stub.ModelInfer.future(_request(3.0), timeout=10)
        deadline = time.monotonic() + 5
        while gate.batcher.queued < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:  # max_queue_size is 2
            stub.ModelInfer(_request(4.0), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        victim.cancel()
        while gate.batcher.queued > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.batcher.queued == 1
        gate.release.set()
        blocker.result(timeout=10)
        queued.result(timeout=10)
        assert 9.0 not in gate.seen and 4.0 not in gate.seen


def test_stop_lets_in_flight_requests_finish(repo: Path) -> None:
    server = Server(repo, port=0).start()
    ch = grpc.insecure_channel(server.address)
    stub = pb_grpc.GRPCInferenceServiceStub(ch)
    gate = Gate(server)
    inflight = stub.ModelInfer.future(_request(1.0), timeout=10)
    assert gate.entered.wait(10)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 10})
    stopper.start()
    time.sleep(0.2)
    gate.release.set()
    resp = inflight.result(timeout=10)
    assert np.frombuffer(resp.raw_output_contents[0], np.float32)[0] == 1.0
    stopper.join(10)
    assert not stopper.is_alive()
    ch.close()


def test_stop_ends_idle_streams_and_health_watches_at_once(repo: Path) -> None:
    # Neither ends by itself: an inference stream kept open between requests
    # (tritonclient's start_stream) and a health Watch held every stop for its whole
    # grace period. Now the stream answers what it read and ends UNAVAILABLE (requests
    # the client sent after that were not read: it must send them elsewhere), and the
    # Watch ends OK after sending NOT_SERVING.
    server = Server(repo, port=0).start()
    idle = threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        yield _request(2.0)
        idle.wait(60)

    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            stream = stub.ModelStreamInfer(requests(), timeout=20)
            assert next(stream).infer_response.raw_output_contents
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(), timeout=20
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 60})
            stopper.start()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert list(watch) == [] and watch.code() == grpc.StatusCode.OK
            with pytest.raises(grpc.RpcError) as info:
                next(stream)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not read further" in info.value.details()
            stopper.join(20)
            assert not stopper.is_alive()
    finally:
        idle.set()
        server.stop(grace=0)


def test_a_stream_stopped_mid_burst_never_ends_ok_with_requests_unanswered(repo: Path) -> None:
    # A drained stream stops reading: requests the client sent after that got no answer,
    # and the stream ended OK, so they were lost without a word (475 of 710 in the
    # review's tritonclient run). Now every request is answered or the stream fails.
    server = Server(repo, port=0).start()
    sent = 0

    def requests() -> Iterator[pb.ModelInferRequest]:
        nonlocal sent
        for _ in range(2000):
            sent += 1
            yield _request(1.0)
            time.sleep(0.002)

    try:
        with grpc.insecure_channel(server.address) as ch:
            stream = pb_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(requests(), timeout=30)
            stopper = threading.Timer(0.3, server.stop, kwargs={"grace": 10})
            stopper.start()
            answered, code = 0, grpc.StatusCode.OK
            try:
                for _ in stream:
                    answered += 1
            except grpc.RpcError as exc:
                code = exc.code()
            stopper.join(20)
            assert answered > 0 and (code == grpc.StatusCode.UNAVAILABLE or answered == sent)
    finally:
        server.stop(grace=0)


def _is_serving(line: str) -> bool:
    """The JSON log line announcing the port (other stderr lines, e.g. from gRPC's C core,
    are not JSON and are skipped)."""
    return line.startswith("{") and json.loads(line)["msg"].startswith("serving")


def _start_cli(repo: Path, *extra: str) -> tuple[subprocess.Popen[str], int, list[str]]:
    env = {**FAULTHANDLER_ENV, "CONVEYOR_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor",
            "serve",
            "--model-repository",
            str(repo),
            "--port",
            "0",
            *extra,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if _is_serving(line):
            return proc, int(json.loads(line)["msg"].rsplit(":", 1)[1]), lines
    proc.kill()
    raise AssertionError(f"server did not start: {lines}")


# SIGHUP (a closed terminal, service managers) ended the server without a drain.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_cli_serves_and_drains_on_signal(repo: Path, sig: signal.Signals) -> None:
    proc, port, lines = _start_cli(repo, "--grace-period", "5")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            assert stub.ModelInfer(_request(1.0), timeout=10)
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(pb.ModelInferRequest(model_name="m", id="req-42"), timeout=10)
        err = stop_cli_server(proc, 30, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    records = [json.loads(line) for line in [*lines, *err.splitlines()] if line.startswith("{")]
    failed = [r for r in records if r.get("request_id") == "req-42"]
    assert failed and failed[0]["code"] == "INVALID_ARGUMENT" and failed[0]["model"] == "m"
    assert any(r["msg"] == "stopped" for r in records)


def test_cli_workers_share_the_port_and_stop_together(repo: Path) -> None:
    proc, port = start_cli_server(repo, "--workers", "2", "--log-level", "warning")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            wait_serving(proc, stub, 60)
            assert stub.ModelInfer(_request(1.0), timeout=10)
        stop_cli_server(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


def test_cli_options_from_a_config_file(repo: Path, tmp_path: Path) -> None:
    config = tmp_path / "conveyor.toml"
    config.write_text(f"[serve]\nmodel-repository = {str(repo)!r}\nport = 0\nmax-queue-size = 7\n")
    env = {**FAULTHANDLER_ENV, "CONVEYOR_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and not _is_serving(line):
            line = proc.stderr.readline()
        assert line, "server did not start"
        stop_cli_server(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_reports_a_used_port(repo: Path, workers: str) -> None:
    with Server(repo, port=0) as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "conveyor",
                "serve",
                "--model-repository",
                str(repo),
                "--port",
                str(server.port),
                "--workers",
                workers,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    # One line that says why; before, gRPC's own "E... add_port.cc:83] Failed to add
    # port" line came first and the message only guessed "(port in use?)".
    port = server.port
    expected = f"conveyor: error: cannot bind 127.0.0.1:{port}: port {port} is in use"
    assert result.stderr.strip().splitlines() == [expected], result.stderr


def test_an_unresolvable_host_is_not_reported_as_a_used_port(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resolver is stubbed, so the test sends no DNS query; gRPC resolves with its
    # own resolver, which the probe spares it.
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
        if host == "nowhere.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ServerError) as exc:
        Server(repo, host="nowhere.invalid", port=0).start()
    assert str(exc.value) == (
        "cannot bind nowhere.invalid:0: cannot resolve host 'nowhere.invalid' "
        "(Name or service not known)"
    )


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_port_in_use_on_one_address_of_the_host_is_refused(
    monkeypatch: pytest.MonkeyPatch, reuse_port: bool
) -> None:
    # "localhost" is 127.0.0.1 and ::1 on most systems. The probe passed as soon as one
    # address bound, so a port held on 127.0.0.1 was served on ::1 alone (or, with
    # SO_REUSEPORT, beside the other server). 127.0.0.2 stands in for ::1 here.
    from conveyor.engine.hosts import bind_problem

    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]

        def getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
            stream = (socket.AF_INET, socket.SOCK_STREAM, 6, "")
            return [(*stream, ("127.0.0.2", port)), (*stream, ("127.0.0.1", port))]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        assert bind_problem("localhost", port, reuse_port=False) == f"port {port} is in use"
        if not reuse_port:
            assert bind_problem("localhost", port, reuse_port=True) == f"port {port} is in use"


def test_load_models_may_be_an_iterator(repo: Path) -> None:
    # It was read twice (the argument check, then the options): a generator's second
    # read was empty, and the explicit-mode server started with no model loaded.
    with Server(repo, port=0, model_control="explicit", load_models=iter(["m"])) as server:
        channel = grpc.insecure_channel(server.address)
        try:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            ready = stub.ModelReady(pb.ModelReadyRequest(name="m"), timeout=30)
            assert ready.ready
        finally:
            channel.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "0"], "needs a fixed --port"),
        (["--port", "1", "--model-control", "explicit"], "needs --model-control poll"),
    ],
)
def test_cli_refuses_workers_it_cannot_serve_correctly(
    repo: Path, flags: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
         "--workers", "2", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and message in result.stderr


def test_cli_requires_a_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "serve"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "--model-repository is required" in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-batch-size", "0", "--max-batch-size must be >= 1"),
        ("--max-queue-size", "-1", "--max-queue-size must be >= 0"),
        ("--instance-count", "0", "--instance-count must be >= 1"),
        ("--max-queue-delay-microseconds", "-5", "--max-queue-delay-microseconds must be >= 0"),
        (
            "--max-message-bytes",
            "-1",
            "--max-message-bytes must be 1..2147483647",
        ),  # gRPC: no limit
    ],
)
def test_cli_refuses_out_of_range_batching_flags(
    repo: Path, flag: str, value: str, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
         "--port", "0", flag, value],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_max_queue_size_zero_keeps_each_models_bound_not_an_empty_queue(repo: Path) -> None:
    # As 0 in config.json keeps the default: a queue that held nothing would refuse
    # every request RESOURCE_EXHAUSTED.
    with (
        Server(repo, port=0, max_queue_size=0) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ModelInfer(_request(1.0), timeout=10).outputs
    with pytest.raises(ServerError, match="max_batch_size must be >= 1"):
        Server(repo, port=0, max_batch_size=0)
    with pytest.raises(ServerError, match=r"max_message_bytes must be 1\.\.2147483647"):
        Server(repo, port=0, max_message_bytes=0)
    with pytest.raises(ServerError, match="metrics_port 8123 is the gRPC port too"):
        Server(repo, port=8123, metrics_port=8123)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
@pytest.mark.parametrize(("host", "workers"), [("::1", "1"), ("[::1]", "1"), ("[::1]", "2")])
def test_cli_serves_an_ipv6_host_written_with_or_without_brackets(
    repo: Path, host: str, workers: str
) -> None:
    # "::1" made the gRPC target "::1:PORT" ("cannot bind ... (port in use?)"); "[::1]"
    # made the --workers port probe and the /metrics endpoint bind "[::1]" literally.
    proc, port = start_cli_server(repo, "--host", host, "--workers", workers, "--metrics-port", "0")
    try:
        with grpc.insecure_channel(f"[::1]:{port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            wait_serving(proc, stub, 90)
            assert stub.ModelInfer(_request(1.0), timeout=10)
        err = stop_cli_server(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err


def test_cli_logs_the_metrics_port_it_chose(repo: Path) -> None:
    # --metrics-port 0 picks a free port; without a log line nobody could scrape it.
    proc, _, lines = _start_cli(repo, "--metrics-port", "0")
    try:
        said = [json.loads(line)["msg"] for line in lines if line.startswith("{")]
        where = [m.split(" ")[-1] for m in said if m.startswith("metrics on ")]
        assert len(where) == 1, said
        assert where[0].startswith("127.0.0.1:") and where[0].endswith("/metrics")
        with urllib.request.urlopen(f"http://{where[0]}", timeout=10) as response:
            assert b"conveyor_model_ready" in response.read()
        stop_cli_server(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


def test_grpc_health_is_not_serving_until_ready_and_again_while_draining(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A readiness probe on grpc.health.v1 must not route traffic to a server that
    refuses every inference (it answered SERVING while the models loaded)."""
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    starting = HeldStart(repo, monkeypatch)
    server = starting.server
    try:
        with grpc.insecure_channel(server.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            for service in ("", SERVICE_NAME):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == not_serving, service
            assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == not_serving
            starting.finish()
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            for service in ("", SERVICE_NAME):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 10})
            stopper.start()
            assert next(watch).status == not_serving  # draining
            watch.cancel()
            stopper.join(10)
            assert not stopper.is_alive()
    finally:
        starting.close()


def test_a_deadline_that_passes_while_computing_is_deadline_exceeded(repo: Path) -> None:
    """gRPC cancels the handler when the deadline passes: that is DEADLINE_EXCEEDED (what
    the client sees), not CANCELLED, and, like a cancelled call, a failure in
    ModelStatistics, whose success + fail then match conveyor_requests_total."""
    with Server(repo, port=0) as server, grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        registry = server.metrics.registry

        def requests(code: str) -> float:
            labels = {"model": "m", "version": "1", "code": code}
            return registry.get_sample_value("conveyor_requests_total", labels) or 0.0

        gate = Gate(server)
        late = stub.ModelInfer.future(_request(1.0), timeout=0.3)
        assert gate.entered.wait(10)
        with pytest.raises(grpc.RpcError) as info:
            late.result(timeout=10)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: requests("DEADLINE_EXCEEDED") == 1)
        gate.release.set()
        wait_until(lambda: 1.0 in gate.seen)  # computed; its answer is dropped
        gate.release.clear()
        gate.entered.clear()
        cancelled = stub.ModelInfer.future(_request(2.0), timeout=10)
        assert gate.entered.wait(10)
        cancelled.cancel()
        wait_until(lambda: requests("CANCELLED") == 1)
        gate.release.set()
        stub.ModelInfer(_request(3.0), timeout=10)
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="m"), timeout=10)
        counts = stats.model_stats[0].inference_stats
        assert (counts.success.count, counts.fail.count) == (1, 2)
        assert counts.fail.ns > 0
        assert requests("OK") == 1
        assert requests("DEADLINE_EXCEEDED") == requests("CANCELLED") == 1


def test_a_response_over_the_message_limit_fails_its_own_request(tmp_path: Path) -> None:
    # gRPC refused to send it after the call had been counted a success, and on a stream
    # the refusal ended the stream: the requests accepted behind it were lost.
    io = {
        "inputs": [{"name": "x", "datatype": "INT8", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1]}],
    }
    write_model(tmp_path, "widen", 1, Widen(), io)

    def request(n: int, rid: str) -> pb.ModelInferRequest:
        x = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT8", shape=[1, n])
        return pb.ModelInferRequest(
            model_name="widen", id=rid, inputs=[x], raw_input_contents=[bytes(n)]
        )

    with Server(tmp_path, port=0, poll_interval=3600, max_message_bytes=1 << 20) as srv:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(srv.address, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            sent = [request(10, "a"), request(200_000, "big"), request(10, "c")]
            replies = list(stub.ModelStreamInfer(iter(sent), timeout=20))
            assert [r.infer_response.id for r in replies] == ["a", "big", "c"]
            assert not replies[0].error_message and not replies[2].error_message
            assert replies[1].error_message.startswith(
                "RESOURCE_EXHAUSTED: response of 1600"
            ) and "message limit of 1048576 bytes (--max-message-bytes)" in (
                replies[1].error_message
            )
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request(200_000, "big"), timeout=20)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-message-bytes" in info.value.details()
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="widen"), timeout=10)
            counted = stats.model_stats[0].inference_stats
            assert (counted.success.count, counted.fail.count) == (2, 2)
