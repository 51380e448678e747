"""Online drift: each served version's inputs and prediction against the trainer's reference.

For a version directory with ``stats.json`` (and ``spec.json`` for vocabularies), the
batcher's worker threads hand every executed batch to :meth:`DriftMonitor.observe`
(after the responses are posted, so latency is unaffected). The monitor keeps a
sliding window of the last ``window_rows`` rows (default 10,000), also bounded to
``window_seconds`` (default 600), as a ring of chunk histograms (a tenth of the
window each, in rows or in time): a chunk is added when it fills or once its first row
is a tenth of ``window_seconds`` old, and the oldest ones leave, by count, or once
their newest row is older than ``window_seconds`` (so the window holds every row of
the last ``window_seconds`` but the newest tenth's, and at most one chunk's worth of
older rows).

* Numeric features: slot counts from :func:`conveyor.kernels.histogram_update` over the
  reference quantile edges (``edges`` in stats.json: 20 bins). The reference share of a
  bin is stats.json's ``bin_shares`` (measured by the profiler); for stats without it,
  the quantile step (1/20), point masses (repeated edges) estimated from the levels.
  Values below the profiled min / above the max count in the first / last bin and in
  ``conveyor_input_invalid_total{reason="out_of_range"}``; NaN (``reason="nan"``) is kept
  out of the bins, as are ``±inf`` (``reason="inf"``), as the reference profile
  (``ingest/profile.py``) leaves every non-finite value out of its shares.
* Categorical features: buckets for the profiled ``top`` values, one for every other
  known value, and an explicit unseen (out-of-vocabulary) bucket whose reference share is 0.
* The prediction (the first numeric output, one score per column): the training
  predictions are not part of the model repository, so its reference is the first full
  window served after load (its quantile edges, 20 bins). That catches a prediction
  moving *while* serving; traffic already drifted at load time is caught by the inputs.

Scores per feature: PSI ``sum((a - e) * ln(a / e))`` with shares floored at 1e-4,
Jensen-Shannon distance (base 2, in [0, 1]) and, for categoricals, Pearson's
chi-square statistic. The alert is 1 while any feature's (or the prediction's) PSI
exceeds the threshold (default 0.2; ``drift_threshold`` in config.json ``parameters``
or ``--drift-threshold``). Scores are exported once the window holds ``min_rows``
rows (default 1,000, or the whole window when ``window_rows`` is smaller), so a quiet
model does not alert on a handful of requests, and go on being exported until it holds
fewer than half that, so a model whose traffic keeps the window near ``min_rows`` does
not drop its alert every time a chunk ages out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from conveyor.categories import category_key
from conveyor.kernels import histogram_update
from conveyor.kernels.histogram import binned_shares, split_point_masses

log = logging.getLogger("conveyor.engine.drift")

FLOOR = 1e-4  # smallest share in PSI / JS, so an empty bin scores finitely
INVALID_REASONS = ("nan", "inf", "out_of_range", "unseen_category")
_NUMERIC_DTYPES = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16"}


# The range of each numeric drift setting: one rule for Server's ``drift``, the serve
# flags and config.json's parameters, each of which names the setting in its own words.
_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "window_rows": (">= 10", lambda v: v >= 10),  # ten chunks of a tenth of the window
    "threshold": ("> 0", lambda v: v > 0),
    "window_seconds": ("> 0", lambda v: v > 0),
}


def out_of_range(setting: str, value: float) -> str | None:
    """The rule ``value`` breaks for the DriftSettings field ``setting`` (``">= 10"``),
    or None when it is in range (NaN is out of every range)."""
    rule, ok = _RANGES[setting]
    return None if ok(value) else rule


@dataclass(frozen=True)
class DriftSettings:
    """Server-wide drift settings (per model: ``drift_threshold``, ``drift_window_rows``,
    ``drift_window_seconds`` and ``drift`` (false = off) in config.json ``parameters``).

    Attributes:
        enabled: track drift for versions that have stats.json (default True).
        window_rows: rows in the sliding window (default 10,000).
        window_seconds: age bound of the window, seconds (default 600): a chunk leaves
            once its newest row is older (see ``DriftMonitor._evict``).
        min_rows: rows the window needs before scores are exported (default 1,000;
            capped at ``window_rows``, see :attr:`rows_to_score`); once exported, they
            are until the window holds fewer than half that
            (:attr:`rows_to_keep_scoring`).
        threshold: PSI above which the alert fires (default 0.2).
        score_interval: least seconds between recomputing the scores in the batching
            path (default 1.0; 0 = every chunk). At high rates a chunk fills many times
            a second, and scoring plus setting ~130 gauges per chunk would cost more
            than the binning; the gauges then trail the window by at most this long
            while traffic flows, and :meth:`DriftMonitor.report` (ModelStatistics,
            ``conveyor drift``) always scores the current window.
    """

    enabled: bool = True
    window_rows: int = 10_000
    window_seconds: float = 600.0
    min_rows: int = 1_000
    threshold: float = 0.2
    score_interval: float = 1.0

    def __post_init__(self) -> None:
        for name in _RANGES:
            rule = out_of_range(name, getattr(self, name))
            if rule is not None:
                raise ValueError(f"drift {name} must be {rule}, got {getattr(self, name)}")

    @property
    def rows_to_keep_scoring(self) -> int:
        """Rows a scored window needs to stay scored: half of :attr:`rows_to_score`
        (at least 1). The gap keeps a model whose traffic holds the window near
        ``rows_to_score`` from flipping between scored and unscored as chunks age out
        and refill: each flip dropped the alert to 0, and ConveyorInputDrift (``for:
        10m``) never fired for it."""
        return max(1, self.rows_to_score // 2)

    @property
    def rows_to_score(self) -> int:
        """Rows the window needs before it is scored: ``min_rows``, or the whole window
        when ``window_rows`` is smaller (a window that can never hold ``min_rows``
        would never be scored). The one rule for the flags and config.json alike."""
        return min(self.min_rows, self.window_rows)

    def for_model(self, parameters: dict[str, Any]) -> DriftSettings:
        """These settings with a model's config.json ``parameters`` applied."""
        out = self
        if "drift" in parameters:
            out = replace(out, enabled=str(parameters["drift"]).lower() not in ("false", "0"))
        for key, attr, kind in (
            ("drift_threshold", "threshold", float),
            ("drift_window_rows", "window_rows", int),
            ("drift_window_seconds", "window_seconds", float),
        ):
            if key not in parameters:
                continue
            raw = parameters[key]
            try:
                value = kind(raw)
            except (TypeError, ValueError):
                raise ValueError(
                    f"config.json parameters.{key}: expected a number, got {raw!r}"
                ) from None
            rule = out_of_range(attr, value)
            if rule is not None:
                raise ValueError(f"config.json parameters.{key} must be {rule}, got {raw!r}")
            out = replace(out, **{attr: value})
        return out


@dataclass(frozen=True)
class FeatureScore:
    """One feature's scores over the current window."""

    feature: str
    kind: str  # numeric | categorical | prediction
    psi: float
    js: float
    chi2: float = 0.0


@dataclass
class DriftReport:
    """What ModelStatistics returns and the gauges show."""

    window_rows: int
    threshold: float
    scored: bool
    features: list[FeatureScore] = field(default_factory=list)
    # Only window_rows is current (the batching path between scorings): the gauges
    # keep their scores. An unscored report that is not rows_only means the window
    # holds too few rows to score, and the gauges drop back to 0.
    rows_only: bool = False

    @property
    def alert(self) -> bool:
        return self.scored and any(f.psi > self.threshold for f in self.features)


# -- reference distributions ----------------------------------------------------------------


def quantile_bin_shares(edges: np.ndarray) -> np.ndarray:
    """Reference share of each of the ``len(edges) - 1`` histogram bins of quantile ``edges``.

    ``edges[i]`` is the ``i / n_bins`` quantile. Bin ``s`` holds ``edges[s-1] <= v < edges[s]``
    (the last bin also ``v == edges[-1]``), so its share is ``P(v < edges[s]) -
    P(v < edges[s-1])``. At a distinct edge ``P(v < e) = i / n_bins``; an edge repeated from
    index ``i0`` on is a point mass, whose lower CDF lies between the levels ``i0 - 1`` and
    ``i0``: the midpoint is used.
    """
    n = len(edges) - 1
    levels = np.arange(n + 1) / n
    below = np.empty(n + 1)
    for j, e in enumerate(edges):
        first = int(np.searchsorted(edges, e, side="left"))
        last = int(np.searchsorted(edges, e, side="right")) - 1
        if first == 0:
            below[j] = 0.0
        elif last > first:
            below[j] = (levels[first - 1] + levels[first]) / 2
        else:
            below[j] = levels[j]
    upper = np.append(below[1:n], 1.0)
    return np.clip(upper - below[:n], 0.0, 1.0)


def psi(actual: np.ndarray, expected: np.ndarray) -> Any:
    """Population stability index of share vectors (each sums to 1) along the last axis:
    a float for ``[bins]``, an array for ``[features, bins]`` (scored in one pass)."""
    a = np.maximum(actual, FLOOR)
    e = np.maximum(expected, FLOOR)
    out = np.sum((a - e) * np.log(a / e), axis=-1)
    return float(out) if out.ndim == 0 else out


def js_distance(actual: np.ndarray, expected: np.ndarray) -> Any:
    """Jensen-Shannon distance, base 2 (0 = same distribution, 1 = disjoint), along the
    last axis: a float for ``[bins]``, an array for ``[features, bins]``."""
    a = actual / np.maximum(actual.sum(axis=-1, keepdims=True), 1e-300)
    e = expected / np.maximum(expected.sum(axis=-1, keepdims=True), 1e-300)
    m = (a + e) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_a = np.where(a > 0, a * np.log2(a / m), 0.0).sum(axis=-1)
        kl_e = np.where(e > 0, e * np.log2(e / m), 0.0).sum(axis=-1)
    out = np.sqrt(np.maximum(0.0, (kl_a + kl_e) / 2))
    return float(out) if out.ndim == 0 else out


def chi_square(counts: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's statistic of observed ``counts`` against ``expected`` shares."""
    n = counts.sum()
    exp = np.maximum(expected, FLOOR) * n
    return float(np.sum((counts - exp) ** 2 / exp))


@dataclass
class _Numeric:
    """Numeric columns of one input tensor, binned on the reference edges."""

    input: int
    columns: np.ndarray  # column indices in the tensor
    names: list[str]
    edges: np.ndarray  # float32 [F, E]
    shares: np.ndarray  # [F, E - 1]
    kind: str = "numeric"

    @property
    def slots(self) -> int:
        return self.edges.shape[1] + 2


@dataclass
class _Categorical:
    """One categorical column: value -> bucket (top values, other known, unseen)."""

    input: int
    column: int
    name: str
    index: dict[Any, int]
    other: int  # bucket of known values outside the top ones
    unseen: int  # bucket of values outside the vocabulary (== other when unknown)
    shares: np.ndarray


def _load_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def build_tracks(
    config: Any, stats_path: Path | None, spec_path: Path | None
) -> tuple[list[_Numeric], list[_Categorical]]:
    """Numeric and categorical tracks for the features that both an input's ``columns``
    and stats.json describe. Raises ValueError when stats.json is unusable."""
    stats = _load_json(stats_path)
    spec = _load_json(spec_path)
    numeric_stats = stats.get("numeric") or {}
    categorical_stats = stats.get("categorical") or {}
    vocabs = {
        f["name"]: [category_key(v) for v in f.get("vocab") or []]
        for f in spec.get("categorical") or []
        if isinstance(f, dict) and "name" in f
    }
    numeric: list[_Numeric] = []
    categorical: list[_Categorical] = []
    for i, tensor in enumerate(config.inputs):
        if not tensor.columns:
            continue
        if tensor.datatype in _NUMERIC_DTYPES:
            cols, names, edges, given = [], [], [], []
            for c, name in enumerate(tensor.columns):
                entry = numeric_stats.get(name)
                if not entry or not entry.get("edges"):
                    continue
                cols.append(c)
                names.append(name)
                edges.append(entry["edges"])
                given.append(entry.get("bin_shares"))
            if not cols:
                continue
            if len({len(e) for e in edges}) != 1:
                raise ValueError(f"{stats_path}: numeric features have different edge counts")
            arr = np.asarray(edges, dtype=np.float32)
            if np.isnan(arr).any() or (np.diff(arr, axis=1) < 0).any() or arr.shape[1] < 2:
                raise ValueError(f"{stats_path}: numeric edges must be sorted numbers")
            # stats.json's measured bin shares when present (exact at point masses),
            # else estimated from the quantile levels.
            shares = np.stack(
                [
                    np.asarray(g, np.float64)
                    if g is not None and len(g) == arr.shape[1] - 1
                    else quantile_bin_shares(e.astype(np.float64))
                    for g, e in zip(given, arr, strict=True)
                ]
            )
            numeric.append(_Numeric(i, np.asarray(cols, np.intp), names, arr, shares))
        elif tensor.datatype == "BYTES":
            for c, name in enumerate(tensor.columns):
                entry = categorical_stats.get(name)
                if not entry or not entry.get("count"):
                    continue
                top = [(category_key(v), int(n)) for v, n in entry.get("top") or []]
                count = int(entry["count"])
                vocab = vocabs.get(name) or []
                if not vocab and int(entry.get("distinct", 0)) <= len(top):
                    vocab = [v for v, _ in top]
                other, unseen = len(top), len(top) + 1
                index: dict[Any, int] = {}
                for v in vocab:
                    index[v] = other
                    index[v.encode()] = other
                for b, (v, _) in enumerate(top):
                    index[v] = b
                    index[v.encode()] = b
                shares = np.zeros(len(top) + 2)
                shares[: len(top)] = [n / count for _, n in top]
                shares[other] = max(0.0, 1.0 - shares[: len(top)].sum())
                categorical.append(
                    _Categorical(i, c, name, index, other, unseen if vocab else other, shares)
                )
    return numeric, categorical


# -- the monitor ---------------------------------------------------------------------------


class _Chunk:
    """Counts of a run of consecutive rows (a tenth of the window, in rows or in time).

    ``newest`` is the ``time.monotonic()`` of its latest batch (None while empty): the
    window's age bound evicts a chunk once its newest row is older than
    ``window_seconds``. Ages run from the rows, not from when the chunk was made, so
    rows arriving after an idle gap are not evicted the moment their chunk fills.
    ``oldest`` is that of its first batch: the chunk joins the window once that is a
    tenth of ``window_seconds`` old, full or not. (Closed by rows alone, a chunk that
    took longer than ``window_seconds`` to fill was the whole window: under ~1.7 rows/s
    at the defaults the window emptied each time the previous chunk aged out before the
    next one filled.)
    """

    __slots__ = ("categorical", "newest", "numeric", "oldest", "prediction", "rows")

    def __init__(self, numeric: list[_Numeric], categorical: list[_Categorical], pred: int) -> None:
        self.rows = 0
        self.oldest: float | None = None
        self.newest: float | None = None
        self.numeric = [np.zeros((len(t.names), t.slots), np.int64) for t in numeric]
        self.categorical = [np.zeros(len(t.shares), np.int64) for t in categorical]
        self.prediction = np.zeros((pred, 0), np.int64)


class DriftMonitor:
    """Sliding-window drift of one model version (thread-safe; fed by the batch workers).

    Args:
        name, version: for labels.
        config: the version's ModelConfig (inputs with ``columns``, outputs).
        stats_path, spec_path: the trainer's reference statistics and spec.
        settings: window and threshold (already merged with the model's parameters).
        metrics: a :class:`conveyor.engine.metrics.DriftMetrics`, or None (no export).
    """

    def __init__(
        self,
        name: str,
        version: int,
        config: Any,
        stats_path: Path | None,
        spec_path: Path | None,
        settings: DriftSettings,
        metrics: Any | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.settings = settings
        self.numeric, self.categorical = build_tracks(config, stats_path, spec_path)
        self._prediction_output = self._pick_prediction(config)
        self._pred_names: list[str] = []
        if self._prediction_output is not None:
            out = config.outputs[self._prediction_output]
            width = int(np.prod(out.shape)) if out.shape else 1
            labels = list(config.labels)
            self._pred_names = (
                ["prediction"]
                if width == 1
                else [
                    f"prediction:{labels[k] if len(labels) == width else k}" for k in range(width)
                ]
            )
        self._pred_sample: list[np.ndarray] = []
        self._pred_sample_rows = 0
        self._pred_edges: np.ndarray | None = None
        self._pred_shares: np.ndarray | None = None
        self._lock = threading.Lock()
        self._chunk_rows = max(1, settings.window_rows // 10)
        self._chunk_seconds = settings.window_seconds / 10
        self._chunks: deque[_Chunk] = deque()
        self._current = self._new_chunk()
        self._report = DriftReport(0, settings.threshold, False)
        self._stale = False  # chunks were added since self._report was scored
        self._scored_at = -float("inf")
        self.metrics = metrics
        if metrics is not None:
            metrics.bind(self)

    @property
    def tracked(self) -> bool:
        """Whether there is anything to track (some input feature has reference statistics)."""
        return bool(self.numeric or self.categorical)

    @property
    def feature_names(self) -> list[tuple[str, str]]:
        """(feature, kind) of every tracked feature, prediction last."""
        out = [(n, "numeric") for t in self.numeric for n in t.names]
        out += [(t.name, "categorical") for t in self.categorical]
        out += [(n, "prediction") for n in self._pred_names]
        return out

    @staticmethod
    def _pick_prediction(config: Any) -> int | None:
        for i, out in enumerate(config.outputs):
            if out.datatype in _NUMERIC_DTYPES and -1 not in out.shape and len(out.shape) <= 1:
                return i
        return None

    def _new_chunk(self) -> _Chunk:
        chunk = _Chunk(self.numeric, self.categorical, 0)
        if self._pred_edges is not None:
            chunk.prediction = np.zeros(
                (self._pred_edges.shape[0], self._pred_edges.shape[1] + 2), np.int64
            )
        return chunk

    # -- hot path (worker threads) -------------------------------------------------------

    def observe(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """Count one executed batch (inputs and outputs in config order, ``[rows, ...]``)."""
        rows = int(inputs[0].shape[0]) if inputs else 0
        if rows == 0:
            return
        numeric_counts, categorical_counts = self._count_inputs(inputs, rows)
        prediction = None
        if self._prediction_output is not None and self._prediction_output < len(outputs):
            prediction = np.ascontiguousarray(
                outputs[self._prediction_output].reshape(rows, -1), dtype=np.float32
            )
        self._add(rows, numeric_counts, categorical_counts, prediction)

    def observe_failed(self, inputs: Sequence[np.ndarray]) -> None:
        """Count the invalid input values (NaN, inf, out of range, unseen) of a batch whose
        model failed; its rows stay out of the drift window (they got no prediction). A
        model that turns NaN into a NaN output fails the batch, so only this counts them:
        ``conveyor_input_invalid_total{reason="nan"}`` never moved for the trainer's models."""
        rows = int(inputs[0].shape[0]) if inputs else 0
        if rows:
            self._count_inputs(inputs, rows)

    def _count_inputs(
        self, inputs: Sequence[np.ndarray], rows: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Slot counts per numeric and categorical track; the invalid values are reported
        to the metrics here."""
        invalid: list[tuple[int, str, str, int]] = []  # (track kind, feature, reason, count)
        numeric_counts = []
        for t in self.numeric:
            x = inputs[t.input]
            if x.ndim != 2:
                x = x.reshape(rows, -1)
            x = x[:, t.columns] if len(t.columns) != x.shape[1] else x
            counts = histogram_update(
                np.ascontiguousarray(x, dtype=np.float32), t.edges, check_edges=False
            )
            numeric_counts.append(counts)
            n_edges = t.edges.shape[1]
            nan = counts[:, n_edges + 1]
            outside = counts[:, 0] + counts[:, n_edges]
            if nan.any() or outside.any():
                inf = np.zeros_like(outside)
                if outside.any():
                    # +-inf land in the outer slots; taken out, so they stay out of
                    # the bins like NaN: the reference profile (ingest/profile.py)
                    # drops every non-finite value, and ingest's `nan` rule treats
                    # them alike. They are counted as reason="inf" below.
                    below, above = (x == -np.inf).sum(axis=0), (x == np.inf).sum(axis=0)
                    counts[:, 0] -= below
                    counts[:, n_edges] -= above
                    inf = below + above
                for f, name in enumerate(t.names):
                    for reason, n in (
                        ("nan", nan[f]),
                        ("inf", inf[f]),
                        ("out_of_range", outside[f] - inf[f]),
                    ):
                        if n:
                            invalid.append((0, name, reason, int(n)))
        categorical_counts = []
        for t in self.categorical:
            column = inputs[t.input].reshape(rows, -1)[:, t.column]
            get, unseen = t.index.get, t.unseen
            ids = np.fromiter((get(v, unseen) for v in column), np.intp, rows)
            counts = np.bincount(ids, minlength=len(t.shares))
            categorical_counts.append(counts)
            if t.unseen != t.other and counts[t.unseen]:
                invalid.append((1, t.name, "unseen_category", int(counts[t.unseen])))
        if invalid and self.metrics is not None:
            self.metrics.invalid(invalid)
        return numeric_counts, categorical_counts

    def _add(
        self,
        rows: int,
        numeric_counts: list[np.ndarray],
        categorical_counts: list[np.ndarray],
        prediction: np.ndarray | None,
    ) -> None:
        """The counts of ``rows`` served rows into the current chunk (and a rescore when
        the chunk closes)."""
        with self._lock:
            chunk = self._current
            for acc, counts in zip(chunk.numeric, numeric_counts, strict=True):
                acc += counts
            for acc, counts in zip(chunk.categorical, categorical_counts, strict=True):
                acc += counts
            if prediction is not None:
                self._observe_prediction(chunk, prediction)
            chunk.rows += rows
            now = time.monotonic()
            if chunk.oldest is None:
                chunk.oldest = now
            chunk.newest = now
            if chunk.rows < self._chunk_rows and now - chunk.oldest < self._chunk_seconds:
                return
            self._close_current()
            if now - self._scored_at >= self.settings.score_interval:
                report = self._rescore(now)
            else:
                self._stale = True
                self._evict(now)
                rows_now = sum(c.rows for c in self._chunks)
                report = DriftReport(rows_now, self.settings.threshold, False, rows_only=True)
        if self.metrics is not None:
            self.metrics.update(report)

    def _observe_prediction(self, chunk: _Chunk, values: np.ndarray) -> None:
        if self._pred_edges is None:
            self._pred_sample.append(values.copy())
            self._pred_sample_rows += len(values)
            if self._pred_sample_rows >= self.settings.window_rows:
                sample = np.concatenate(self._pred_sample)
                sample = sample[np.isfinite(sample).all(axis=1)]
                self._pred_sample = []
                if len(sample):
                    levels = np.linspace(0, 1, 21)
                    edges = np.quantile(sample, levels, axis=0).T
                    # a hard 0/1 prediction's zeros and ones in bins of their own
                    edges = split_point_masses(edges).astype(np.float32)
                    self._pred_edges = np.ascontiguousarray(edges)
                    # Measured on the sample, binned as served rows will be: with the point
                    # masses split, the quantile levels no longer give each bin's share.
                    self._pred_shares = np.stack(
                        [binned_shares(e, sample[:, j]) for j, e in enumerate(edges)]
                    )
            return
        if chunk.prediction.shape[1] == 0:
            chunk.prediction = np.zeros(
                (self._pred_edges.shape[0], self._pred_edges.shape[1] + 2), np.int64
            )
        histogram_update(values, self._pred_edges, chunk.prediction, check_edges=False)

    # -- window and scores (under the lock) -------------------------------------------------

    def _close_current(self) -> None:
        self._chunks.append(self._current)
        self._current = self._new_chunk()

    def _rescore(self, now: float) -> DriftReport:
        self._report = self._score(now)
        self._scored_at = now
        self._stale = False
        return self._report

    def _aged(self, now: float) -> bool:
        """Whether the oldest chunk's newest row is older than ``window_seconds``."""
        newest = self._chunks[0].newest if self._chunks else None
        return newest is not None and now - newest > self.settings.window_seconds

    def _evict(self, now: float) -> None:
        """Drop the oldest chunks while the rest still hold ``window_rows``, and those
        whose newest row is older than ``window_seconds``: the window keeps every row
        of the last ``window_seconds`` (up to ``window_rows``), plus the older rows of
        the one chunk that straddles that age (at most a tenth of the window). Evicting
        on a chunk's first row instead would drop rows younger than the bound, and at
        a rate below a chunk per ``window_seconds`` every chunk as soon as it filled."""
        total = sum(c.rows for c in self._chunks)
        while self._chunks and (
            total - self._chunks[0].rows >= self.settings.window_rows or self._aged(now)
        ):
            total -= self._chunks.popleft().rows

    def _score(self, now: float) -> DriftReport:
        self._evict(now)
        chunks = self._chunks
        rows = sum(c.rows for c in chunks)
        settings = self.settings
        needed = settings.rows_to_keep_scoring if self._report.scored else settings.rows_to_score
        report = DriftReport(rows, settings.threshold, rows >= needed)
        if not report.scored:
            return report
        for k, t in enumerate(self.numeric):
            counts = sum(c.numeric[k] for c in chunks)
            report.features += _numeric_scores(t.names, counts, t.shares, "numeric")
        for k, t in enumerate(self.categorical):
            counts = sum(c.categorical[k] for c in chunks)
            if counts.sum() == 0:
                continue
            shares = counts / counts.sum()
            report.features.append(
                FeatureScore(
                    t.name,
                    "categorical",
                    psi(shares, t.shares),
                    js_distance(shares, t.shares),
                    chi_square(counts, t.shares),
                )
            )
        if self._pred_shares is not None:
            scored = [c.prediction for c in chunks if c.prediction.shape[1]]
            # Its own hysteresis: the prediction's reference comes a window after the
            # inputs', so the inputs' being scored says nothing of it.
            was = any(f.kind == "prediction" for f in self._report.features)
            pred_needed = settings.rows_to_keep_scoring if was else settings.rows_to_score
            # Every finite prediction counts, below the reference's range too (slot 0).
            if scored and sum(int(p[0, :-1].sum()) for p in scored) >= pred_needed:
                counts = sum(scored)
                report.features += _numeric_scores(
                    self._pred_names, counts, self._pred_shares, "prediction"
                )
        return report

    def refresh(self) -> None:
        """Bring the gauges up to the window without traffic (the repository calls this
        every second): rescore when chunks were added unscored and ``score_interval`` has
        passed since the last scoring, or when rows have aged out of ``window_seconds``;
        a partial chunk whose first row is a tenth of ``window_seconds`` old joins the
        window first."""
        self._up_to_date(throttled=True)

    def report(self) -> DriftReport:
        """The scores of the current window (recomputed when chunks were added since the
        last scoring, or when it has aged); the gauges are brought up to date too."""
        return self._up_to_date(throttled=False)

    def _up_to_date(self, throttled: bool) -> DriftReport:
        """The current report, rescored (gauges updated) when the window has aged or
        chunks were added unscored -- those only once ``score_interval`` has passed
        since the last scoring when ``throttled``."""
        with self._lock:
            now = time.monotonic()
            oldest = self._current.oldest
            if oldest is not None and now - oldest >= self._chunk_seconds:
                self._close_current()
                self._stale = True
            stale = self._stale and (
                not throttled or now - self._scored_at >= self.settings.score_interval
            )
            if not (stale or self._aged(now)):
                return self._report
            report = self._rescore(now)
        if self.metrics is not None:
            self.metrics.update(report)
        return report


def _numeric_scores(
    names: list[str], counts: np.ndarray, shares: np.ndarray, kind: str
) -> list[FeatureScore]:
    """Scores of ``[F, E + 2]`` slot counts against ``[F, E - 1]`` bin shares."""
    n_edges = shares.shape[1] + 1
    bins = counts[:, 1:n_edges].astype(np.float64)
    # Out of the profiled range belongs to the outermost bins (their reference share
    # includes the tails); NaN and +-inf (taken out of the outer slots in observe) are
    # data-quality counts, not a distribution change.
    bins[:, 0] += counts[:, 0]
    bins[:, -1] += counts[:, n_edges]
    totals = bins.sum(axis=1)
    # All features in one numpy pass: per-feature Python calls cost more than the
    # arithmetic at 64 features (this runs on a worker thread, holding the GIL).
    actual = bins / np.maximum(totals, 1)[:, None]
    psis = psi(actual, shares)
    jss = js_distance(actual, shares)
    return [
        FeatureScore(name, kind, float(psis[f]), float(jss[f]))
        for f, name in enumerate(names)
        if totals[f] > 0
    ]


def load_monitor(
    name: str,
    version: int,
    config: Any,
    stats_path: Path | None,
    spec_path: Path | None,
    settings: DriftSettings,
    metrics_factory: Any | None = None,
) -> DriftMonitor | None:
    """A monitor for a loaded version, or None when drift is off or nothing can be tracked.

    ``metrics_factory(name, version)`` makes the monitor's Prometheus children. A bad
    stats.json is logged and leaves drift off for the version (the model still serves).
    """
    if stats_path is None:
        return None
    try:
        merged = settings.for_model(config.parameters)
        if not merged.enabled:
            return None
        monitor = DriftMonitor(name, version, config, stats_path, spec_path, merged)
    except Exception as exc:
        # Any error here (a list where an object belongs, a number for a feature's
        # entry: AttributeError, IndexError, ...) comes from the files, and drift is an
        # add-on: the model serves without it rather than failing its load.
        log.warning(
            "drift tracking off: %s: %s",
            type(exc).__name__,
            exc,
            extra={"model": name, "version": version},
        )
        return None
    if not monitor.tracked:
        return None
    if metrics_factory is not None:
        monitor.metrics = metrics_factory(name, version)
        monitor.metrics.bind(monitor)
    return monitor
