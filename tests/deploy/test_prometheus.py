"""deploy/: promtool checks the rules and config, a real Prometheus scrapes a running
conveyor server, and the Grafana dashboard only queries metrics the server exports.

Needs Debian's ``prometheus`` package (``promtool`` and ``prometheus``), which
``make test`` installs when it runs as root; elsewhere these tests skip and say why.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from models import AFFINE_IO, Affine, write_model  # noqa: E402

from conveyor.client import Client  # noqa: E402
from conveyor.engine.server import Server  # noqa: E402

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
MISSING = (
    "Debian's prometheus package is not installed (promtool/prometheus not on PATH); "
    "`make test` installs it when run as root (see the Makefile's prometheus step)"
)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=MISSING)
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason=MISSING)
REQUESTS = 5
METRIC_NAME = re.compile(r"\bconveyor_[a-zA-Z0-9_]+")


def _promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_checks_rules_and_config() -> None:
    assert "6 rules found" in _promtool("check", "rules", "deploy/prometheus/alerts.yml")
    _promtool("check", "config", "deploy/prometheus/prometheus.yml")


@needs_promtool
def test_alert_rules_fire_on_the_right_series() -> None:
    _promtool("test", "rules", "tests/deploy/alerts_test.yml")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A conveyor server on 127.0.0.1 (free ports) that has answered a few requests."""
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "affine", 1, Affine(), AFFINE_IO)
    with Server(root, port=0, metrics_port=0, poll_interval=3600) as srv:
        with Client(srv.address, timeout=10) as client:
            for _ in range(REQUESTS):
                client.infer("affine", {"x": np.ones((3, 4), np.float32)})
        yield srv


def _scrape_names(port: int) -> set[str]:
    """Every sample name the server can export: the families in a live scrape (also
    those without series yet) with the suffixes of their type."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def _dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    dashboard = json.loads((DEPLOY / "grafana" / "conveyor.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_dashboard_names_only_exported_metrics(server: Server) -> None:
    assert server.metrics_port is not None
    exported = _scrape_names(server.metrics_port)
    exprs = _dashboard_queries()
    assert len(exprs) >= 12
    used = {name for e in exprs for name in METRIC_NAME.findall(e)}
    assert used, "the dashboard queries no conveyor metric"
    assert used <= exported, (
        f"dashboard names metrics the server does not export: {used - exported}"
    )
    # The panels the issue asks for are there.
    joined = "\n".join(exprs)
    for needed in (
        "conveyor_requests_total",
        "conveyor_request_duration_seconds_bucket",
        "conveyor_queue_duration_seconds_bucket",
        "conveyor_compute_duration_seconds_bucket",
        "conveyor_batch_size_bucket",
        "conveyor_queue_depth",
        "conveyor_drift_score",
    ):
        assert needed in joined, needed
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (model, le) (rate(conveyor_compute" in joined


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(port: int, path: str, **params: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@needs_prometheus
def test_prometheus_scrapes_the_server(server: Server, tmp_path: Path) -> None:
    # deploy/prometheus/prometheus.yml, pointed at this server and scraping every second.
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    for old, new in (
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ("127.0.0.1:8002", f"127.0.0.1:{server.metrics_port}"),
        ("- alerts.yml", f"- {DEPLOY / 'prometheus' / 'alerts.yml'}"),
    ):
        assert old in config, old
        config = config.replace(old, new)
    (tmp_path / "prometheus.yml").write_text(config)
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        result: list[Any] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = _api(port, "query", query="conveyor_request_duration_seconds_count")
                result = body["data"]["result"]
            except OSError:  # not listening yet
                pass
            if result:
                break
            time.sleep(0.5)
        log.flush()
        assert result, "no data from Prometheus:\n" + (tmp_path / "prometheus.log").read_text()
        assert result[0]["metric"]["model"] == "affine"
        assert result[0]["metric"]["job"] == "conveyor"
        assert float(result[0]["value"][1]) == REQUESTS
        # The alert rules loaded, and every dashboard expression is valid PromQL there.
        groups = _api(port, "rules")["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} == {
            "ConveyorHighP99Latency",
            "ConveyorHighErrorRatio",
            "ConveyorCallsRefused",
            "ConveyorQueueSaturated",
            "ConveyorInputDrift",
            "ConveyorModelHung",
        }
        for expr in _dashboard_queries():
            if expr.startswith("label_values("):
                continue  # a Grafana function, not PromQL
            query = expr.replace("$model", ".*").replace("$__rate_interval", "1m")
            assert _api(port, "query", query=query)["status"] == "success", expr
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
