"""/metrics over HTTP and the drift view over gRPC, against an in-process server."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from drift_data import FakeClock, profile, uniform_monitor
from models import AFFINE_IO, VERSION_IO, Affine, Version, write_model
from served_repository import HeldStart

from conveyor.cli import main
from conveyor.client import Client, InvalidArgumentError
from conveyor.engine.drift import DriftSettings
from conveyor.engine.metrics import ServerMetrics
from conveyor.engine.server import Server


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _value(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def _drift_repo(root: Path, profile_dir: Path, **parameters: str) -> tuple[int, str]:
    """``affine`` v1 with named columns and the trainer's stats.json (N(0, 1) features);
    returns (width, input name)."""
    directory = write_model(root, "affine", 1, Affine(), AFFINE_IO, max_batch_size=64)
    config = json.loads((directory / "config.json").read_text())
    width = config["inputs"][0]["shape"][0]
    columns = [f"f{i}" for i in range(width)]
    config["inputs"][0]["columns"] = columns
    if parameters:
        config["parameters"] = parameters
    (directory / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    table = pa.table(
        {**{c: rng.normal(0, 1, 20_000) for c in columns}, "y": rng.integers(0, 2, 20_000)}
    )
    stats, spec = profile(table, "y", profile_dir)
    (directory / "stats.json").write_bytes(stats.read_bytes())
    (directory / "spec.json").write_bytes(spec.read_bytes())
    return width, config["inputs"][0]["name"]


@pytest.fixture(scope="module")
def drift_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mrepo")
    width, input_name = _drift_repo(root, tmp_path_factory.mktemp("prof"))
    settings = DriftSettings(window_rows=1_000, min_rows=500, score_interval=0)
    with Server(root, port=0, metrics_port=0, poll_interval=3600, drift=settings) as srv:
        yield srv, width, input_name


def test_metrics_and_drift_view(drift_server, capsys: pytest.CaptureFixture[str]) -> None:
    server, width, input_name = drift_server
    rng = np.random.default_rng(1)
    with Client(server.address, timeout=10) as client:
        for _ in range(40):
            client.infer("affine", {input_name: rng.normal(0, 1, (50, width)).astype(np.float32)})
        for _ in range(40):  # one feature moves by 3 std
            x = rng.normal(0, 1, (50, width)).astype(np.float32)
            x[:, 0] += 3
            client.infer("affine", {input_name: x})
    text = _scrape(server.metrics_port)
    assert _value(text, 'conveyor_requests_total{code="OK",model="affine",version="1"}') == 80
    assert _value(text, 'conveyor_rows_total{model="affine",version="1"}') == 4000
    assert _value(text, 'conveyor_request_duration_seconds_count{model="affine"') == 80
    assert _value(text, 'conveyor_request_duration_seconds_bucket{le="5e-05"') >= 0
    assert _value(text, 'conveyor_batch_size_sum{model="affine",version="1"}') == 4000
    assert _value(text, 'conveyor_queue_duration_seconds_count{model="affine"') == 80
    assert _value(text, 'conveyor_model_ready{model="affine",version="1"}') == 1
    assert _value(text, 'conveyor_max_queue_size{model="affine",version="1"}') == 1024
    assert _value(text, 'conveyor_drift_alert{model="affine",version="1"}') == 1
    assert _value(text, 'conveyor_drift_score{feature="f0",method="psi"') > 0.2
    assert _value(text, "conveyor_inflight_requests") == 0
    assert main(["drift", "--target", server.address, "--model", "affine", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[0]
    assert report["alert"] and report["features"][0]["feature"] in ("f0", "prediction")
    # --top -2 listed all but two features (a negative slice); 0 or less is refused
    for flag, value in (("--top", "-2"), ("--top", "0"), ("--timeout", "0")):
        argv = ["drift", "--target", server.address, "--model", "affine", flag, value]
        assert main(argv) == 1
        assert f"{flag} must be" in capsys.readouterr().err
    with Client(server.address, timeout=10) as client, pytest.raises(InvalidArgumentError):
        client.infer("affine", {input_name: np.zeros((1, width + 1), np.float32)})
    text = _scrape(server.metrics_port)
    assert _value(text, 'conveyor_requests_total{code="INVALID_ARGUMENT",model="affine"') == 1


# Each Client on a connection of its own (not the process-wide subchannel pool).
LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows_per_process(values: Path, scratch: Path) -> dict[str, float]:
    """conveyor_rows_total of each worker, read from its own value file alone."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    out = {}
    for f in values.glob("counter_*.db"):
        pid = f.stem.rsplit("_", 1)[1]
        (scratch / pid).mkdir(parents=True)
        shutil.copy(f, scratch / pid / f.name)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(scratch / pid))
        out[pid] = _value(generate_latest(registry).decode(), "conveyor_rows_total{")
    return out


def test_workers_export_the_aggregate(tmp_path: Path) -> None:
    """``conveyor serve --workers 2``: the parent's /metrics merges both processes
    (counters and histograms summed, gauges per their multiprocess_mode)."""
    root = tmp_path / "repo"
    window = 100  # rows; chunks of 10 rows, one per request
    width, input_name = _drift_repo(root, tmp_path / "prof", drift_window_rows=str(window))
    values = tmp_path / "values"  # the shared value directory, to see who wrote what
    values.mkdir()
    port, metrics_port = _free_port(), _free_port()
    while metrics_port == port:  # two closed probes may get the same number back
        metrics_port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(root),
         "--port", str(port), "--metrics-port", str(metrics_port), "--workers", "2",
         "--log-level", "warning"],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(values)},
    )  # fmt: skip
    requests, rows = 24, 10
    try:
        deadline = time.monotonic() + 90
        while True:  # both workers have loaded the model: their queue bounds add up
            assert proc.poll() is None, "conveyor serve --workers 2 exited"
            try:
                if _value(_scrape(metrics_port), "conveyor_max_queue_size{") == 2 * 1024:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.3)
        x = np.random.default_rng(2).normal(0, 1, (rows, width)).astype(np.float32)
        for _ in range(requests):
            # A connection of its own per request, so SO_REUSEPORT spreads them.
            with Client(f"127.0.0.1:{port}", timeout=10, options=LOCAL_POOL) as client:
                client.infer("affine", {input_name: x})
        per_worker = _rows_per_process(values, tmp_path / "split")
        assert len(per_worker) == 2, f"requests reached one worker only: {per_worker}"
        # Drift is counted in the worker thread after the response is sent, so the last
        # batches' window rows may land a moment after the client has its answers.
        windows = sum(min(n, window) for n in per_worker.values())
        settle = time.monotonic() + 15
        text = _scrape(metrics_port)
        while (
            _value(text, 'conveyor_drift_window_rows{model="affine",version="1"}') != windows
            and time.monotonic() < settle
        ):
            time.sleep(0.2)
            text = _scrape(metrics_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    ok = 'conveyor_requests_total{code="OK",model="affine",version="1"}'
    assert _value(text, ok) == requests
    assert _value(text, 'conveyor_rows_total{model="affine",version="1"}') == requests * rows
    assert sum(per_worker.values()) == requests * rows
    assert _value(text, 'conveyor_request_duration_seconds_count{model="affine"') == requests
    assert _value(text, 'conveyor_batch_size_sum{model="affine",version="1"}') == requests * rows
    # Gauges: ready is the minimum over the workers, in-flight and queue depth the sum,
    # drift window rows the sum (each worker's window holds its own requests' rows).
    assert _value(text, 'conveyor_model_ready{model="affine",version="1"}') == 1
    assert _value(text, 'conveyor_inflight_requests{model="affine"}') == 0
    assert _value(text, 'conveyor_queue_depth{model="affine"}') == 0
    assert _value(text, 'conveyor_drift_window_rows{model="affine",version="1"}') == windows


def _version_with_stats(root: Path, version: int) -> Path:
    """``m`` at ``version``: answers its version number; one column ``x`` profiled as
    uniform on [0, 1] (stats.json), so drift is tracked."""
    io = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "columns": ["x"]}],
        "outputs": [{"name": "v", "datatype": "FP32", "shape": [1]}],
    }
    directory = write_model(root, "m", version, Version(version), io, max_batch_size=2048)
    stats = {"numeric": {"x": {"edges": np.linspace(0, 1, 21).tolist(), "bin_shares": [0.05] * 20}}}
    (directory / "stats.json").write_text(json.dumps(stats))
    return directory


def _series(server: Server, name: str) -> dict[str, float]:
    """``name``'s samples in the server's registry: {labels text: value}."""
    from prometheus_client import generate_latest

    out = {}
    for line in generate_latest(server.metrics.registry).decode().splitlines():  # type: ignore[union-attr]
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            out[labels] = float(value)
    return out


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_an_unloaded_versions_drift_series_are_removed(tmp_path: Path) -> None:
    _version_with_stats(tmp_path, 1)
    settings = DriftSettings(score_interval=0)
    with Server(tmp_path, port=0, poll_interval=0.1, drift=settings) as server:
        repository = server.repository
        assert repository is not None
        with Client(server.address, timeout=10) as client:
            for _ in range(2):  # far outside the profiled [0, 1]
                client.infer("m", {"x": np.full((1000, 1), 5.0, np.float32)})
        v1 = '{model="m",version="1"}'
        assert _series(server, "conveyor_drift_alert") == {v1: 1.0}
        _version_with_stats(tmp_path, 2)  # latest:1: v2 replaces v1
        _wait_for(lambda: list(repository.models["m"].versions) == [2])
        v2 = '{model="m",version="2"}'
        assert _series(server, "conveyor_drift_alert") == {v2: 0.0}
        assert _series(server, "conveyor_drift_window_rows") == {v2: 0.0}
        assert not [k for k in _series(server, "conveyor_drift_score") if 'version="1"' in k]
        # model_ready and the queue bound of the unloaded version stay, at 0 (README).
        assert _series(server, "conveyor_model_ready") == {v1: 0.0, v2: 1.0}
        assert _series(server, "conveyor_max_queue_size")[v1] == 0.0
        # A reload of v2 (a changed file) keeps v2's series: the new copy owns them.
        old = repository.models["m"].versions[2]
        (tmp_path / "m" / "2" / "spec.json").write_text("{}")
        _wait_for(lambda: repository.models["m"].versions.get(2) not in (None, old))
        assert _series(server, "conveyor_drift_alert") == {v2: 0.0}
        assert len([k for k in _series(server, "conveyor_drift_score") if 'version="2"' in k]) == 4
        # Drifted again, then reloaded with drift monitoring off: the alert kept firing
        # at 1 for ever (the new copy had no monitor to move it).
        with Client(server.address, timeout=10) as client:
            for _ in range(2):
                client.infer("m", {"x": np.full((1000, 1), 5.0, np.float32)})
        assert _series(server, "conveyor_drift_alert") == {v2: 1.0}
        config = tmp_path / "m" / "2" / "config.json"
        off = json.loads(config.read_text())
        off.setdefault("parameters", {})["drift"] = "false"
        old = repository.models["m"].versions[2]
        config.write_text(json.dumps(off))
        _wait_for(lambda: repository.models["m"].versions.get(2) not in (None, old))
        assert repository.models["m"].versions[2].drift is None
        assert _series(server, "conveyor_drift_alert") == {}
        assert _series(server, "conveyor_drift_score") == {}


def test_a_new_copy_and_an_unscorable_feature_show_no_old_scores(tmp_path: Path) -> None:
    # A reloaded version's new copy shares its old copy's label children: they showed the
    # old scores over an empty window. A feature with no finite value in a scored window
    # kept its last score (a broken upstream column looked as before on the dashboard).
    metrics = ServerMetrics()
    settings = DriftSettings(window_rows=100, min_rows=10, score_interval=0)
    psi = {"model": "m", "version": "1", "feature": "x", "method": "psi"}

    def score() -> float | None:
        return metrics.registry.get_sample_value("conveyor_drift_score", psi)

    first = uniform_monitor(tmp_path, settings, metrics.drift("m", 1))
    first.observe([np.full((20, 1), 5.0, np.float32)], [])  # far outside [0, 1]
    assert score() > 0.2
    uniform_monitor(tmp_path, settings, metrics.drift("m", 1))  # the reload's new copy
    assert score() == 0
    first.observe([np.full((20, 1), 5.0, np.float32)], [])
    assert score() > 0.2
    first.observe([np.full((100, 1), np.nan, np.float32)], [])  # the window: all NaN
    assert score() == 0


def test_drift_gauges_drop_to_zero_when_the_window_is_too_small_to_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conveyor.engine.drift

    # A fake clock: with time.sleep, a test process descheduled for window_seconds
    # between the two observe() calls saw the first 20 rows aged out (window_rows 20).
    clock = FakeClock()
    monkeypatch.setattr(conveyor.engine.drift, "time", clock)
    metrics = ServerMetrics()
    # score_interval: the first chunk is scored, later ones only move window_rows.
    settings = DriftSettings(window_rows=100, window_seconds=0.5, min_rows=10, score_interval=3600)
    mon = uniform_monitor(tmp_path, settings, metrics.drift("m", 1))
    labels = {"model": "m", "version": "1"}
    psi = {**labels, "feature": "x", "method": "psi"}

    def sample(name: str, extra: dict[str, str] = labels) -> float | None:
        return metrics.registry.get_sample_value(name, extra)

    mon.observe([np.full((20, 1), 5.0, np.float32)], [])  # far outside [0, 1]
    assert sample("conveyor_drift_alert") == 1 and sample("conveyor_drift_score", psi) > 0.2
    mon.observe([np.full((20, 1), 5.0, np.float32)], [])  # a rows-only update
    assert sample("conveyor_drift_window_rows") == 40 and sample("conveyor_drift_alert") == 1
    clock.advance(0.7)  # no traffic: every row is older than the window
    report = mon.report()
    assert not report.scored and report.window_rows == 0
    assert sample("conveyor_drift_alert") == 0 and sample("conveyor_drift_score", psi) == 0
    assert sample("conveyor_drift_window_rows") == 0


def test_requests_to_a_known_model_that_cannot_serve_carry_its_name(tmp_path: Path) -> None:
    import grpc

    from conveyor.engine.protos import grpc_service_pb2 as pb
    from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc

    broken = tmp_path / "m" / "1"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")  # its only version fails to load
    with Server(tmp_path, port=0, poll_interval=3600) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for model, version, code in (
                ("m", "", grpc.StatusCode.UNAVAILABLE),
                ("m", "1", grpc.StatusCode.UNAVAILABLE),
                ("m", "7", grpc.StatusCode.NOT_FOUND),
                ("nope", "1", grpc.StatusCode.NOT_FOUND),
            ):
                request = pb.ModelInferRequest(model_name=model, model_version=version)
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(request, timeout=10)
                assert info.value.code() == code
        # The client's names reach the labels only where the repository knows them.
        assert _series(server, "conveyor_requests_total") == {
            '{code="UNAVAILABLE",model="m",version=""}': 1.0,
            '{code="UNAVAILABLE",model="m",version="1"}': 1.0,
            '{code="NOT_FOUND",model="m",version=""}': 1.0,
            '{code="NOT_FOUND",model="",version=""}': 1.0,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["missing", "file", "read-only"])
def test_workers_refuse_an_unusable_prometheus_multiproc_dir(
    tmp_path: Path,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A missing directory was a ValueError traceback from prometheus-client, a read-only
    # one a traceback from every worker.
    import errno

    from conveyor.engine import metrics

    values = tmp_path / "values"
    if kind == "file":
        values.write_text("")
    elif kind == "read-only":
        values.mkdir()

        def read_only(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EROFS, "Read-only file system")

        # Root writes into a mode 0o500 directory: a read-only mount is what refuses it.
        monkeypatch.setattr(metrics.tempfile, "TemporaryFile", read_only)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(values))
    flags = ["--workers", "2", "--port", str(_free_port()), "--metrics-port", "-1"]
    assert main(["serve", "--model-repository", str(tmp_path), *flags]) == 1
    problem = {
        "missing": "not a directory (it does not exist)",
        "file": "not a directory",
        "read-only": "not writable (Read-only file system)",
    }[kind]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"conveyor: error: PROMETHEUS_MULTIPROC_DIR={values}: {problem};")


def test_an_idle_servers_drift_gauges_follow_the_window(tmp_path: Path) -> None:
    # Rows age out of window_seconds with no request to rescore them: the alert must
    # not stay on for good once traffic stops (it did: only a batch rescored).
    _version_with_stats(tmp_path, 1)
    settings = DriftSettings(window_rows=1000, window_seconds=2.0, min_rows=100, score_interval=0)
    with Server(tmp_path, port=0, poll_interval=3600, drift=settings) as server:
        with Client(server.address, timeout=10) as client:
            client.infer("m", {"x": np.full((1000, 1), 5.0, np.float32)})  # far outside [0, 1]
        v1 = '{model="m",version="1"}'
        # Binned after the response is posted: wait for it, then for the rows to age out.
        _wait_for(lambda: _series(server, "conveyor_drift_alert") == {v1: 1.0})
        _wait_for(lambda: _series(server, "conveyor_drift_alert") == {v1: 0.0})
        assert _series(server, "conveyor_drift_window_rows") == {v1: 0.0}


def test_a_chunk_left_unscored_by_the_score_interval_is_scored_without_traffic(
    tmp_path: Path,
) -> None:
    # The second chunk arrives within score_interval of the first scoring, so its batch
    # only counts its rows; with no later request it used to stay unscored for good.
    _version_with_stats(tmp_path, 1)
    settings = DriftSettings(window_rows=10_000, min_rows=1000, score_interval=0.5)
    rng = np.random.default_rng(0)
    v1 = '{model="m",version="1"}'
    with Server(tmp_path, port=0, poll_interval=3600, drift=settings) as server:
        with Client(server.address, timeout=10) as client:
            client.infer("m", {"x": rng.random((1000, 1), np.float32)})  # in distribution
            _wait_for(lambda: _series(server, "conveyor_drift_window_rows") == {v1: 1000.0})
            assert _series(server, "conveyor_drift_alert") == {v1: 0.0}
            client.infer("m", {"x": np.full((2000, 1), 5.0, np.float32)})  # drifted
        _wait_for(lambda: _series(server, "conveyor_drift_window_rows") == {v1: 3000.0})
        _wait_for(lambda: _series(server, "conveyor_drift_alert") == {v1: 1.0})


def test_requests_refused_while_starting_or_draining_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UNAVAILABLE "server is not ready" is a server-side error the error-ratio alert
    counts; it was answered before any metric was touched."""
    import grpc

    from conveyor.engine.protos import grpc_service_pb2 as pb
    from conveyor.engine.protos import grpc_service_pb2_grpc as pb_grpc

    def request(model: str) -> pb.ModelInferRequest:
        return pb.ModelInferRequest(
            model_name=model,
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
            raw_input_contents=[np.zeros(1, np.float32).tobytes()],
        )

    write_model(tmp_path, "m", 1, Version(1), VERSION_IO)
    starting = HeldStart(tmp_path, monkeypatch, poll_interval=3600)
    server = starting.server
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for model in ("m", "nope"):  # a name the repository does not know: no label
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(request(model), timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            starting.finish()
            stub.ModelInfer(request("m"), timeout=10)
            # Draining: a request in flight on a stream is answered; the stream then ends
            # UNAVAILABLE (it reads no more requests) and the stop does not wait for it.
            requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
            stream = stub.ModelStreamInfer(iter(requests.get, None), timeout=30)
            requests.put(request("m"))
            assert not next(stream).error_message
            stopper = threading.Thread(target=server.stop, kwargs={"grace": 10})
            stopper.start()
            with pytest.raises(grpc.RpcError) as info:
                next(stream)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            stopper.join(10)
            assert not stopper.is_alive()
            requests.put(None)
        assert _series(server, "conveyor_requests_total") == {
            '{code="UNAVAILABLE",model="m",version=""}': 1.0,
            '{code="UNAVAILABLE",model="",version=""}': 1.0,
            '{code="OK",model="m",version="1"}': 2.0,
        }
    finally:
        starting.close()
