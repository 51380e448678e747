"""Reading a server's Prometheus page: deltas between scrapes, drift, and absent metrics."""

from __future__ import annotations

import pytest

from conveyor.bench import prom
from conveyor.engine.server import Server

BEFORE = """\
# HELP conveyor_queue_duration_seconds Time in queue.
# TYPE conveyor_queue_duration_seconds histogram
conveyor_queue_duration_seconds_bucket{model="fraud",version="1",le="0.001"} 10.0
conveyor_queue_duration_seconds_bucket{model="fraud",version="1",le="+Inf"} 10.0
conveyor_queue_duration_seconds_sum{model="fraud",version="1"} 0.005
conveyor_queue_duration_seconds_count{model="fraud",version="1"} 10.0
# TYPE conveyor_batch_size histogram
conveyor_batch_size_bucket{model="fraud",version="1",le="+Inf"} 5.0
conveyor_batch_size_sum{model="fraud",version="1"} 10.0
conveyor_batch_size_count{model="fraud",version="1"} 5.0
# TYPE conveyor_requests counter
conveyor_requests_total{model="fraud",version="1",code="OK"} 10.0
conveyor_requests_total{model="other",version="1",code="OK"} 99.0
"""

AFTER = """\
# TYPE conveyor_queue_duration_seconds histogram
conveyor_queue_duration_seconds_bucket{model="fraud",version="1",le="0.001"} 110.0
conveyor_queue_duration_seconds_bucket{model="fraud",version="1",le="+Inf"} 110.0
conveyor_queue_duration_seconds_sum{model="fraud",version="1"} 0.025
conveyor_queue_duration_seconds_count{model="fraud",version="1"} 110.0
# TYPE conveyor_batch_size histogram
conveyor_batch_size_bucket{model="fraud",version="1",le="+Inf"} 30.0
conveyor_batch_size_sum{model="fraud",version="1"} 110.0
conveyor_batch_size_count{model="fraud",version="1"} 30.0
# TYPE conveyor_requests counter
conveyor_requests_total{model="fraud",version="1",code="OK"} 108.0
conveyor_requests_total{model="fraud",version="1",code="INVALID_ARGUMENT"} 2.0
# TYPE conveyor_drift_score gauge
conveyor_drift_score{model="fraud",version="1",feature="amount",method="psi"} 0.9
conveyor_drift_score{model="fraud",version="1",feature="amount",method="js"} 0.3
conveyor_drift_score{model="fraud",version="1",feature="hour",method="psi"} 0.01
conveyor_drift_score{model="fraud",version="1",feature="merchant_category",method="psi"} 0.4
# TYPE conveyor_drift_alert gauge
conveyor_drift_alert{model="fraud",version="1"} 1.0
# TYPE conveyor_drift_window_rows gauge
conveyor_drift_window_rows{model="fraud",version="1"} 10000.0
"""


def test_server_side_means_over_the_point_only() -> None:
    side = prom.server_side(prom.parse(BEFORE), prom.parse(AFTER), "fraud")
    assert side["server_queue_ms"] == pytest.approx(1e3 * 0.020 / 100)  # 0.2 ms
    assert side["server_batch_size"] == pytest.approx(100 / 25)
    assert side["server_requests"] == 100  # the other model's 99 are not counted
    assert side["server_compute_ms"] is None and side["server_request_ms"] is None


def test_drift_status() -> None:
    status = prom.drift(prom.parse(AFTER), "fraud")
    assert status is not None and status.alert
    assert status.window_rows == 10000
    assert status.drifted() == ["amount", "merchant_category"]
    assert status.top(n=1) == [("amount", 0.9)]
    assert prom.drift(prom.parse(BEFORE), "fraud") is None  # no drift metrics: None
    assert prom.drift(prom.parse(AFTER), "other") is None


def test_urls_and_bad_pages() -> None:
    assert prom.metrics_url("127.0.0.1:8002") == "http://127.0.0.1:8002/metrics"
    assert prom.metrics_url("http://h:1/custom") == "http://h:1/custom"
    with pytest.raises(prom.MetricsError, match="cannot read"):
        prom.scrape("http://127.0.0.1:9/metrics", timeout=1)
    with pytest.raises(prom.MetricsError, match="parse"):
        prom.parse("conveyor_x{model= 1\n")


def test_metrics_url_at_the_grpc_port_is_one_clear_error(server: Server) -> None:
    # 8001 for 8002: the gRPC server answers HTTP/1 with HTTP/2 bytes, and http.client's
    # BadStatusLine went up as a traceback.
    url = prom.metrics_url(server.address)
    with pytest.raises(prom.MetricsError) as raised:
        prom.scrape(url, timeout=5)
    message = str(raised.value)
    assert message.startswith(f"cannot read metrics from {url}: not an HTTP/1 answer")
    assert "\n" not in message
    with pytest.raises(prom.MetricsError, match=r"cannot read metrics from .*nonnumeric port"):
        prom.scrape("http://127.0.0.1:notaport/metrics", timeout=5)
