"""/metrics over HTTP and the drift view over gRPC, against an in-process server."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from drift_data import profile
from models import AFFINE_IO, Affine, write_model

from conveyor.cli import main
from conveyor.client import Client, InvalidArgumentError
from conveyor.engine.drift import DriftSettings
from conveyor.engine.server import Server


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _value(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


@pytest.fixture(scope="module")
def drift_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mrepo")
    directory = write_model(root, "affine", 1, Affine(), AFFINE_IO, max_batch_size=64)
    config = json.loads((directory / "config.json").read_text())
    width = config["inputs"][0]["shape"][0]
    columns = [f"f{i}" for i in range(width)]
    config["inputs"][0]["columns"] = columns
    (directory / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    table = pa.table(
        {**{c: rng.normal(0, 1, 20_000) for c in columns}, "y": rng.integers(0, 2, 20_000)}
    )
    stats, spec = profile(table, "y", tmp_path_factory.mktemp("prof"))
    (directory / "stats.json").write_bytes(stats.read_bytes())
    (directory / "spec.json").write_bytes(spec.read_bytes())
    settings = DriftSettings(window_rows=1_000, min_rows=500)
    with Server(root, port=0, metrics_port=0, poll_interval=3600, drift=settings) as srv:
        yield srv, width, config["inputs"][0]["name"]


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
    with Client(server.address, timeout=10) as client, pytest.raises(InvalidArgumentError):
        client.infer("affine", {input_name: np.zeros((1, width + 1), np.float32)})
    text = _scrape(server.metrics_port)
    assert _value(text, 'conveyor_requests_total{code="INVALID_ARGUMENT",model="affine"') == 1
