"""Prometheus metrics of the server (``/metrics`` on ``--metrics-port``).

Latency and load (histograms, so replicas can be merged, unlike summaries):

* ``conveyor_request_duration_seconds{model,version}``: end to end inside the server;
* ``conveyor_queue_duration_seconds{model,version}``: arrival to taken into a batch;
* ``conveyor_compute_duration_seconds{model,version}``: one batch (assemble, forward, split);
* ``conveyor_batch_size{model,version}``: rows per executed batch;
* ``conveyor_requests_total{model,version,code}`` (gRPC status name), ``conveyor_rows_total``;
* gauges ``conveyor_inflight_requests{model}``, ``conveyor_queue_depth{model}``,
  ``conveyor_model_ready{model,version}`` and ``conveyor_max_queue_size{model,version}``
  (the queue bound of a loaded version, 0 once unloaded: queue saturation is
  ``sum by (model) (conveyor_queue_depth) / sum by (model) (conveyor_max_queue_size)``).

Drift (see :mod:`conveyor.engine.drift`): ``conveyor_drift_score{model,version,feature,method}``,
``conveyor_drift_alert{model,version}``, ``conveyor_drift_window_rows{model,version}`` and
``conveyor_input_invalid_total{model,feature,reason}``.

Cost: label children are resolved once per model version, so the hot path is a few
locked float additions per request (request histogram, counter, in-flight gauge) and
per batch (compute, batch size, rows); queue durations are one observation per request
in the worker thread.

Several processes (``conveyor serve --workers N``): the parent points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before starting the workers, which
then write their values to files there; the parent serves ``/metrics`` through
prometheus-client's MultiProcessCollector, which sums counters and histograms over the
processes. Gauges say how they merge: in-flight requests, queue depth, the queue bound
and drift window rows are summed over live processes (``livesum``); ``model_ready`` is the minimum
(``livemin``: 1 only when every live process serves the version); drift scores and the
alert are the maximum (``livemax``: each process scores its own share of the traffic,
and the worst one is what an alert should see).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from conveyor.engine.hosts import bare_host, host_port
from conveyor.engine.temp_dirs import process_temp_dir

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# 50 us .. 10 s: sub-millisecond phases (queue, a small forward) are resolved.
LATENCY_BUCKETS = (
    50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class ServerMetrics:
    """Every metric of one server, registered in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        mv = ("model", "version")
        self.request_duration = Histogram(
            "conveyor_request_duration_seconds",
            "Request time inside the server, from decoding to the response (seconds).",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "conveyor_queue_duration_seconds",
            "Time a request waited in the model's queue (seconds).",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "conveyor_compute_duration_seconds",
            "Time to execute one batch: assemble inputs, forward, split outputs (seconds).",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "conveyor_batch_size",
            "Rows per executed batch.",
            mv,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "conveyor_requests",
            "Inference requests by gRPC status code.",
            (*mv, "code"),
            registry=r,
        )
        self.rows = Counter("conveyor_rows", "Rows inferred.", mv, registry=r)
        self.inflight = Gauge(
            "conveyor_inflight_requests",
            "Inference requests being processed (queued or computing).",
            ("model",),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_depth = Gauge(
            "conveyor_queue_depth",
            "Requests waiting in the model's queues.",
            ("model",),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_ready = Gauge(
            "conveyor_model_ready",
            "1 while the model version is loaded and serving.",
            mv,
            multiprocess_mode="livemin",
            registry=r,
        )
        self.max_queue_size = Gauge(
            "conveyor_max_queue_size",
            "Requests each priority level's queue of the version accepts "
            "(dynamic_batching.max_queue_size); 0 unloaded.",
            mv,
            multiprocess_mode="livesum",
            registry=r,
        )
        self.drift_score = Gauge(
            "conveyor_drift_score",
            "Drift of a feature over the sliding window against the reference (psi, js, chi2).",
            (*mv, "feature", "method"),
            multiprocess_mode="livemax",
            registry=r,
        )
        self.drift_alert = Gauge(
            "conveyor_drift_alert",
            "1 while any feature's PSI exceeds the model's drift threshold.",
            mv,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.drift_window_rows = Gauge(
            "conveyor_drift_window_rows",
            "Rows in the drift window.",
            mv,
            multiprocess_mode="livesum",
            registry=r,
        )
        self.execution_timeouts = Counter(
            "conveyor_execution_timeouts",
            "Batches that ran past the execution timeout; their requests were answered "
            "DEADLINE_EXCEEDED and their worker threads abandoned.",
            mv,
            registry=r,
        )
        self.abandoned_executions = Gauge(
            "conveyor_abandoned_executions",
            "Abandoned batches still running in the model (their threads cannot be killed).",
            mv,
            multiprocess_mode="livesum",
            registry=r,
        )
        self.input_invalid = Counter(
            "conveyor_input_invalid",
            "Input values that are NaN, +-inf, outside the profiled range, or unseen categories.",
            ("model", "feature", "reason"),
            registry=r,
        )

    def version(self, model: str, version: int | str) -> VersionMetrics:
        """Label children of one model version (resolved once, used on the hot path)."""
        return VersionMetrics(self, model, str(version))

    def drift(self, model: str, version: int | str) -> DriftMetrics:
        """Drift gauges and data-quality counters of one model version."""
        return DriftMetrics(self, model, str(version))

    def unserved(self, model: str, version: str, code: str) -> None:
        """A request that no version served (unknown model or version, not loaded, load
        failed). ``model`` and ``version`` must come from the repository, not the
        request (see ``ModelRepository.labels_for``): names a client makes up would
        give unbounded label values and grow memory, so unknown ones are ""."""
        self.requests.labels(model, version, code).inc()


class VersionMetrics:
    """Pre-resolved label children for one model version."""

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self._metrics = metrics
        self.model, self.version = model, version
        self.request_duration = metrics.request_duration.labels(model, version)
        self.queue_duration = metrics.queue_duration.labels(model, version)
        self.compute_duration = metrics.compute_duration.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.rows = metrics.rows.labels(model, version)
        self.ok = metrics.requests.labels(model, version, "OK")
        self.inflight = metrics.inflight.labels(model)
        self.queue_depth = metrics.queue_depth.labels(model)
        self.ready = metrics.model_ready.labels(model, version)
        self.execution_timeouts = metrics.execution_timeouts.labels(model, version)
        self.abandoned = metrics.abandoned_executions.labels(model, version)
        self._codes: dict[str, Any] = {}

    def failed(self, code: str) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._metrics.requests.labels(
                self.model, self.version, code
            )
        child.inc()

    def batch(self, rows: int, compute_seconds: float, queue_seconds: list[float]) -> None:
        """One executed batch (called in the worker thread)."""
        self.batch_size.observe(rows)
        self.rows.inc(rows)
        self.compute_duration.observe(compute_seconds)
        observe = self.queue_duration.observe
        for seconds in queue_seconds:
            observe(seconds)

    def failed_batch(self, compute_seconds: float, queue_seconds: list[float]) -> None:
        """A batch whose execution failed (worker thread): its compute time and the
        queue times of its requests (batch size and rows count inferred rows only)."""
        self.compute_duration.observe(compute_seconds)
        observe = self.queue_duration.observe
        for seconds in queue_seconds:
            observe(seconds)


class DriftMetrics:
    """Drift gauges of one model version; updated when the window moves."""

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self._metrics = metrics
        self.model, self.version = model, version
        self.alert = metrics.drift_alert.labels(model, version)
        self.window_rows = metrics.drift_window_rows.labels(model, version)
        self._scores: dict[tuple[str, str], Any] = {}
        self._invalid: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._retired = False
        self._zeroed = True  # every series is 0 (bind) until the first scored report

    def bind(self, monitor: Any) -> None:
        """Create every series of ``monitor``'s features at 0, so they exist before data.
        Set, not only created: a reloaded version's new copy gets the label children its
        old copy scored, which would otherwise show the old scores over an empty window."""
        self.alert.set(0)
        self.window_rows.set(0)
        for feature, kind in monitor.feature_names:
            methods = ("psi", "js", "chi2") if kind == "categorical" else ("psi", "js")
            for method in methods:
                self._score(feature, method).set(0)

    def _score(self, feature: str, method: str) -> Any:
        key = (feature, method)
        child = self._scores.get(key)
        if child is None:
            child = self._scores[key] = self._metrics.drift_score.labels(
                self.model, self.version, feature, method
            )
        return child

    def update(self, report: Any) -> None:
        """Show a :class:`conveyor.engine.drift.DriftReport`: window rows always; scores
        and alert when scored, 0 when the window holds too few rows to score, kept as
        they are for a ``rows_only`` report."""
        with self._lock:
            if self._retired:
                return
            self.window_rows.set(report.window_rows)
            if report.rows_only:
                return
            if not report.scored:
                # Too few rows to score (the window aged out or emptied): back to the
                # state of a version that has not been scored yet (bind). Zero, not
                # removed: the series exist from load on and the dashboard's panels and
                # ConveyorInputDrift read 0 as "nothing to report"; a removal would
                # also not reach multiprocess mode's value files. window_rows (below
                # the minimum) says the scores are not current.
                if not self._zeroed:
                    for child in self._scores.values():
                        child.set(0)
                    self.alert.set(0)
                    self._zeroed = True
                return
            self._zeroed = False
            scored = set()
            for f in report.features:
                self._score(f.feature, "psi").set(f.psi)
                self._score(f.feature, "js").set(f.js)
                if f.kind == "categorical":
                    self._score(f.feature, "chi2").set(f.chi2)
                scored.add(f.feature)
            # A feature with no finite value in the window has no score: 0, as before
            # any data, not the last window's figure frozen on the dashboard.
            for (feature, _), child in self._scores.items():
                if feature not in scored:
                    child.set(0)
            self.alert.set(1 if report.alert else 0)

    def retire(self, successor: DriftMetrics | None) -> None:
        """The version stops serving: later updates (batches it still drains) are ignored.

        ``successor``: the drift gauges of the copy that now serves under the same labels
        (a reload), or None (an unload, or a reload without drift monitoring). Series the
        successor does not show are removed: all of them without one (no alert keeps
        firing and no dashboard keeps showing scores for a version that does not score),
        else the scores of features it no longer has. The successor's own series (the
        label children are shared) are its own. Removed series are set to 0 first: in
        multiprocess mode a removal does not reach the value files the parent merges, so
        there 0 is what stays.
        """
        with self._lock:
            self._retired = True
            labels = (self.model, self.version)
            gauges = []
            if successor is None:
                gauges += [
                    (self._metrics.drift_alert, self.alert, labels),
                    (self._metrics.drift_window_rows, self.window_rows, labels),
                ]
            kept = set() if successor is None else set(successor._scores)
            gauges += [
                (self._metrics.drift_score, child, (*labels, *key))
                for key, child in self._scores.items()
                if key not in kept
            ]
            multiprocess = MULTIPROC_ENV in os.environ
            for metric, child, labels in gauges:
                child.set(0)
                if not multiprocess:  # prometheus-client only warns there
                    metric.remove(*labels)

    def invalid(self, items: list[tuple[int, str, str, int]]) -> None:
        """Add data-quality counts: (kind, feature, reason, count) tuples."""
        with self._lock:
            for _, feature, reason, count in items:
                key = (feature, reason)
                child = self._invalid.get(key)
                if child is None:
                    child = self._invalid[key] = self._metrics.input_invalid.labels(
                        self.model, feature, reason
                    )
                child.inc(count)


class MetricsEndpoint:
    """An HTTP server for ``/metrics`` on ``host:port`` (port 0: a free one) in a thread."""

    def __init__(self, registry: Any, host: str, port: int) -> None:
        try:
            self._httpd, self._thread = start_http_server(
                port, addr=bare_host(host), registry=registry
            )
        except OSError as exc:
            where = host_port(host, port)
            raise OSError(f"cannot bind metrics port {where}: {exc.strerror}") from None
        self.port = int(self._httpd.server_port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


class MultiProcessMetrics:
    """The parent side of multiprocess mode: a value directory shared with the workers,
    and ``/metrics`` merged over them. Create it before starting the workers."""

    def __init__(self) -> None:
        existing = os.environ.get(MULTIPROC_ENV)
        if existing:
            # Checked here, once: each worker would otherwise fail on it with a traceback.
            problem = _unusable(Path(existing))
            if problem is not None:
                raise ValueError(
                    f"{MULTIPROC_ENV}={existing}: {problem}; the workers of --workers N write "
                    "their metric values there (unset it for a temporary directory)"
                )
        self._owned = existing is None
        self.directory = Path(existing) if existing else process_temp_dir("metrics")
        if not self._owned:
            # Values from an earlier run would be merged into this one's.
            for stale in self.directory.glob("*.db"):
                stale.unlink()
        os.environ[MULTIPROC_ENV] = str(self.directory)
        self.endpoint: MetricsEndpoint | None = None

    def serve(self, host: str, port: int) -> int:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.directory))
        self.endpoint = MetricsEndpoint(registry, host, port)
        return self.endpoint.port

    def process_exited(self, pid: int) -> None:
        """Drop the live gauges of a worker that exited (its counters keep counting)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path=str(self.directory))

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        if self._owned:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(self.directory, ignore_errors=True)


def _unusable(directory: Path) -> str | None:
    """Why the workers could not keep their metric files in ``directory``, or None."""
    if not directory.is_dir():
        return "not a directory" + ("" if directory.exists() else " (it does not exist)")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        return f"not writable ({exc.strerror or exc})"
    return None
