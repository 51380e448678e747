"""The server's side of a load point, read from its Prometheus ``/metrics`` endpoint.

Scraped when a point's measured window starts and when it ends (:class:`WindowScrapes`);
the difference of the histograms' ``_sum`` and ``_count`` gives the mean time requests spent
queued and computing and the mean executed batch size over exactly that window, whatever ran
before. Metric names are conveyor's (see
``engine/README.md``): ``conveyor_request_duration_seconds``,
``conveyor_queue_duration_seconds``, ``conveyor_compute_duration_seconds``,
``conveyor_batch_size``, ``conveyor_requests_total{code}``, and for drift
``conveyor_drift_score{model,version,feature,method}``, ``conveyor_drift_alert{model,version}``
and ``conveyor_drift_window_rows{model,version}``. A server without some of them (another
OIP server, or conveyor without drift tracking) gives None for those, never an error.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from conveyor.errors import ConveyorError

NO_DRIFT = "server exposes no drift metrics"

_HISTOGRAMS = {
    "request_ms": "conveyor_request_duration_seconds",
    "queue_ms": "conveyor_queue_duration_seconds",
    "compute_ms": "conveyor_compute_duration_seconds",
}


class MetricsError(ConveyorError):
    """The metrics endpoint could not be read or parsed."""


def metrics_url(value: str) -> str:
    """``host:port`` or a full URL -> the URL of the metrics page (``/metrics`` by default)."""
    url = value if "://" in value else f"http://{value}"
    path = url.split("://", 1)[1].partition("/")[2]
    return url if path else f"{url.rstrip('/')}/metrics"


@dataclass(frozen=True)
class Samples:
    """Every sample of one scrape: ``{(sample name, sorted label pairs): value}``."""

    values: Mapping[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def select(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """Samples called ``name`` whose labels include ``labels``."""
        out = []
        for (sample, pairs), value in self.values.items():
            if sample != name:
                continue
            found = dict(pairs)
            if all(found.get(k) == v for k, v in labels.items()):
                out.append((found, value))
        return out

    def total(self, name: str, **labels: str) -> float | None:
        """The sum of the matching samples; None when there is none."""
        found = self.select(name, **labels)
        return sum(v for _, v in found) if found else None

    def names(self) -> set[str]:
        return {name for name, _ in self.values}


def parse(text: str) -> Samples:
    """Prometheus text exposition format -> :class:`Samples`."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                values[key] = float(sample.value)
    except ValueError as exc:
        raise MetricsError(f"cannot parse the metrics page: {exc}") from None
    return Samples(values)


def scrape(url: str, timeout: float = 5.0) -> Samples:
    """Read and parse the metrics page at ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        # HTTPException: something other than HTTP/1 answered (a gRPC port, say); ValueError:
        # a URL urllib cannot use.
        what = str(exc) or type(exc).__name__
        # Its text is the bytes that came back (HTTP/2 frames from a gRPC port).
        if isinstance(exc, http.client.BadStatusLine) and not isinstance(
            exc, http.client.RemoteDisconnected
        ):
            what = f"not an HTTP/1 answer ({type(exc).__name__}): is this the gRPC port?"
        raise MetricsError(f"cannot read metrics from {url}: {what}") from None
    return parse(text)


def server_side(before: Samples, after: Samples, model: str) -> dict[str, float | None]:
    """What the server measured between two scrapes, for ``model``.

    ``server_request_ms``, ``server_queue_ms``: mean ms per request; ``server_compute_ms``:
    mean ms per executed batch (the compute histogram has one observation per batch, a
    request charged its batch's time); None when the server has no such histogram.
    ``server_batch_size``: mean rows per executed batch; ``server_requests``: requests the
    server counted, all codes.
    """

    def delta(name: str) -> float | None:
        a, b = after.total(name, model=model), before.total(name, model=model)
        if a is None:
            return None
        return a - (b or 0.0)

    def mean(name: str, scale: float) -> float | None:
        total, count = delta(f"{name}_sum"), delta(f"{name}_count")
        if total is None or not count:
            return None
        return scale * total / count

    out: dict[str, float | None] = {
        f"server_{key}": mean(name, 1e3) for key, name in _HISTOGRAMS.items()
    }
    out["server_batch_size"] = mean("conveyor_batch_size", 1.0)
    out["server_requests"] = delta("conveyor_requests_total")
    return out


class WindowScrapes:
    """Scrapes of ``url`` at the start and the end of a load point's measured window.

    Give it to :func:`conveyor.bench.loadgen.run_load` as ``on_window``; then
    :meth:`server_side` is :func:`server_side` over exactly the window (not the warm-up, the
    client processes' start-up or the drain after it). Each scrape waits at most
    ``timeout`` seconds (default: a quarter of ``duration``, within 0.5-5 s), so a slow page
    moves the end scrape by little. A failed scrape is passed to ``on_error`` (an exception
    of this module) and leaves :meth:`server_side` None.
    """

    def __init__(
        self,
        url: str,
        duration: float,
        on_error: Callable[[MetricsError], None] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout if timeout is not None else min(5.0, max(0.5, duration / 4))
        self.on_error = on_error
        self.samples: dict[str, Samples | None] = {}

    def __call__(self, edge: str) -> None:
        try:
            self.samples[edge] = scrape(self.url, timeout=self.timeout)
        except MetricsError as exc:
            self.samples[edge] = None
            if self.on_error is not None:
                self.on_error(exc)

    def server_side(self, model: str) -> dict[str, float | None] | None:
        """:func:`server_side` between the two scrapes; None unless both were read."""
        start, end = self.samples.get("start"), self.samples.get("end")
        if start is None or end is None:
            return None
        return server_side(start, end, model)


# The fields :func:`server_side` fills, for a point whose scrapes failed (all None).
SERVER_FIELDS: tuple[str, ...] = (
    *(f"server_{key}" for key in _HISTOGRAMS),
    "server_batch_size",
    "server_requests",
)


@dataclass(frozen=True)
class DriftStatus:
    """The drift metrics of one model: whether any version alerts, and scores per feature."""

    alert: bool
    scores: dict[str, dict[str, float]]  # feature -> method -> score
    window_rows: float | None

    def drifted(self, method: str = "psi", threshold: float = 0.2) -> list[str]:
        """Features whose ``method`` score exceeds ``threshold``, highest first."""
        found = [(s[method], f) for f, s in self.scores.items() if s.get(method, 0.0) > threshold]
        return [f for _, f in sorted(found, reverse=True)]

    def top(self, method: str = "psi", n: int = 5) -> list[tuple[str, float]]:
        ranked = sorted(
            ((f, s[method]) for f, s in self.scores.items() if method in s),
            key=lambda item: -item[1],
        )
        return ranked[:n]


def drift(samples: Samples, model: str) -> DriftStatus | None:
    """``model``'s drift status, or None when the server exposes no drift metrics."""
    alerts = samples.select("conveyor_drift_alert", model=model)
    scores = samples.select("conveyor_drift_score", model=model)
    if not alerts and not scores:
        return None
    by_feature: dict[str, dict[str, float]] = {}
    for labels, value in scores:
        feature, method = labels.get("feature", "?"), labels.get("method", "?")
        slot = by_feature.setdefault(feature, {})
        # Several versions served at once: report each feature's worst score.
        slot[method] = max(value, slot.get(method, value))
    return DriftStatus(
        alert=any(v > 0 for _, v in alerts),
        scores=by_feature,
        window_rows=samples.total("conveyor_drift_window_rows", model=model),
    )
