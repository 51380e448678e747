"""Profiling: reference statistics of validated rows, written as ``stats.json``.

``stats.json`` (``version`` 1)::

    {
      "version": 1,
      "rows": 12345,                      # rows that passed validation (rows_out)
      "n_bins": 20,
      "quantiles": {"method": "exact" | "sample", "sample_size": 200000, "seed": 0},
      "numeric": {name: {"count", "nulls", "mean", "std", "min", "max", "edges": [21 floats]}},
      "categorical": {name: {"count", "nulls", "distinct", "top": [[value, count], ...]}},
      "label": {"name", "task", "class_counts": {class: count}, "class_fraction": {class: p}}
               # regression: numeric statistics as above instead of class_counts
      "weight": null | numeric statistics
    }

``count``/``mean``/``std`` (population, ddof 0)/``min``/``max`` are over valid rows (what the
trainer sees; use mean/std for normalisation); ``nulls`` counts nulls in every row read, before
validation. ``edges`` are ``n_bins + 1`` quantile bin edges at ``linspace(0, 1, n_bins + 1)``,
first = min and last = max, every feature with the same number of edges (rows of the float32
``[features, n_edges]`` array the drift histogram takes). An edge that repeats the one before it
in float32 (a point mass: a flag that is 0 in 97% of rows) is moved to the next float32 above,
so that the point mass has a bin of its own (``kernels.histogram.split_point_masses``); the
edges are then strictly increasing, and the last may exceed max by a few float32 steps.
Quantiles are exact while a feature has at most ``sample_size`` values, otherwise computed on a
uniform random sample of that size (bottom-k of seeded random keys, so the same data and seed
give the same edges). A feature with no values has all edges 0.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conveyor.ingest.spec import FeatureSpec
from conveyor.ingest.validate import Checked
from conveyor.kernels.histogram import binned_shares, split_point_masses

STATS_VERSION = 1


@dataclass
class ProfileConfig:
    """``n_bins`` quantile bins (edges = n_bins + 1); ``top_k`` categorical frequencies kept;
    ``sample_size`` values per feature kept for quantiles; ``seed`` for that sample."""

    n_bins: int = 20
    top_k: int = 20
    sample_size: int = 200_000
    seed: int = 0


def _float_at_most(value: int) -> float:
    """The largest float64 not above ``value`` (Python compares an int with a float exactly)."""
    f = float(value)
    return f if f <= value else math.nextafter(f, -math.inf)


def _float_at_least(value: int) -> float:
    """The smallest float64 not below ``value``."""
    f = float(value)
    return f if f >= value else math.nextafter(f, math.inf)


class _Numeric:
    """Streaming count/mean/M2 (Chan et al. merge), min, max and a bottom-k uniform sample."""

    def __init__(self, cfg: ProfileConfig, salt: int) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng([cfg.seed, salt])
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = np.inf, -np.inf
        self.nulls = 0
        self.sample = np.empty(0, dtype=np.float64)
        self.keys = np.empty(0, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)]
        n = len(values)
        if n == 0:
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        keys = np.concatenate([self.keys, self.rng.random(n)])
        sample = np.concatenate([self.sample, values])
        k = self.cfg.sample_size
        if len(keys) > k:
            keep = np.argpartition(keys, k - 1)[:k]
            keys, sample = keys[keep], sample[keep]
        self.keys, self.sample = keys, sample

    def cover(self, least: int, most: int) -> None:
        """Widen ``min``/``max`` to hold the integers ``least`` and ``most`` exactly: rounded to
        the nearest float64, as :meth:`update` takes them, a value beyond 2**53 can move past
        the column's true minimum or maximum, and the range rule, which compares the integers
        with the profiled bounds, would then quarantine the very rows profiled."""
        self.min = min(self.min, _float_at_most(least))
        self.max = max(self.max, _float_at_least(most))

    def result(self) -> dict[str, Any]:
        n_edges = self.cfg.n_bins + 1
        if self.count == 0:
            return {
                "count": 0,
                "nulls": self.nulls,
                "mean": 0.0,
                "std": 0.0,
                "min": 0.0,
                "max": 0.0,
                "edges": [0.0] * n_edges,
            }
        edges = np.quantile(self.sample, np.linspace(0.0, 1.0, n_edges))
        edges[0], edges[-1] = self.min, self.max
        edges = np.maximum.accumulate(np.clip(edges, self.min, self.max))
        # A point mass (a repeated quantile) gets a bin of its own (see split_point_masses):
        # a rare flag's zeros and ones shared one bin, and its drift could never score.
        edges = split_point_masses(edges)
        # The share of the (sampled) values in each histogram bin, binned as the drift
        # histogram bins them: the exact drift reference.
        shares = binned_shares(edges, self.sample)
        return {
            "count": self.count,
            "nulls": self.nulls,
            "mean": self.mean,
            "std": float(np.sqrt(self.m2 / self.count)),
            "min": self.min,
            "max": self.max,
            "edges": [float(e) for e in edges],
            "bin_shares": [float(x) for x in shares],
        }


class Profiler:
    """Accumulates statistics over validated chunks; :meth:`result` gives the stats dict."""

    def __init__(self, spec: FeatureSpec, config: ProfileConfig | None = None) -> None:
        self.spec = spec
        self.cfg = config or ProfileConfig()
        self.rows = 0
        names = list(spec.numeric_names)
        if spec.label.task == "regression":
            names.append(spec.label.name)
        if spec.weight is not None:
            names.append(spec.weight)
        self.numeric = {n: _Numeric(self.cfg, i) for i, n in enumerate(dict.fromkeys(names))}
        self.counts = {n: Counter() for n in spec.categorical_names}
        self.cat_nulls = dict.fromkeys(spec.categorical_names, 0)
        self.classes: Counter = Counter()
        self.exact = True

    def update(self, checked: Checked, raw_nulls: dict[str, int] | None = None) -> None:
        """Add a validated chunk; ``raw_nulls`` are null counts per column before validation."""
        valid = pa.array(checked.valid)
        table = checked.table.filter(valid)
        self.rows += table.num_rows
        for name, acc in self.numeric.items():
            col = table.column(name)
            acc.nulls += (raw_nulls or {}).get(name, 0)
            # An integer beyond 2**53 (ns timestamps, hashed ids, uint64) has no float64 of
            # its own: the statistics take the nearest one, as the loader's float32 does.
            values = pc.cast(pc.drop_null(col), pa.float64(), safe=False).to_numpy()
            acc.update(values)
            if pa.types.is_integer(col.type) and len(values):
                least_most = pc.min_max(col)
                acc.cover(least_most["min"].as_py(), least_most["max"].as_py())
        for name in self.counts:
            self.cat_nulls[name] += (raw_nulls or {}).get(name, 0)
            vc = pc.value_counts(pc.drop_null(table.column(name)))
            for v, c in zip(
                vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True
            ):
                self.counts[name][v] += c
        if self.spec.label.task != "regression":
            vc = pc.value_counts(table.column(self.spec.label.name))
            for v, c in zip(
                vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True
            ):
                self.classes[v] += c

    def result(self) -> dict[str, Any]:
        spec, cfg = self.spec, self.cfg
        exact = all(a.count <= cfg.sample_size for a in self.numeric.values())
        out: dict[str, Any] = {
            "version": STATS_VERSION,
            "rows": self.rows,
            "n_bins": cfg.n_bins,
            "quantiles": {
                "method": "exact" if exact else "sample",
                "sample_size": cfg.sample_size,
                "seed": cfg.seed,
            },
            "numeric": {n: self.numeric[n].result() for n in spec.numeric_names},
            "categorical": {},
        }
        for name, counts in self.counts.items():
            top = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[: cfg.top_k]
            out["categorical"][name] = {
                "count": sum(counts.values()),
                "nulls": self.cat_nulls[name],
                "distinct": len(counts),
                "top": [[v, c] for v, c in top],
            }
        label = spec.label
        if label.task == "regression":
            out["label"] = {
                "name": label.name,
                "task": label.task,
                **self.numeric[label.name].result(),
            }
        else:
            total = sum(self.classes.values())
            counts = {str(c): int(self.classes.get(c, 0)) for c in label.classes or []}
            out["label"] = {
                "name": label.name,
                "task": label.task,
                "class_counts": counts,
                "class_fraction": {k: (v / total if total else 0.0) for k, v in counts.items()},
            }
        out["weight"] = self.numeric[spec.weight].result() if spec.weight else None
        return out


def write_stats(stats: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(stats, indent=2) + "\n")


def load_stats(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def profiled_ranges(stats: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``{feature: (min, max)}`` from a stats dict, for the ``range`` rule (features
    without a counted value, or hand-written stats without a count, have none)."""
    numeric = stats.get("numeric", {})
    return {n: (s["min"], s["max"]) for n, s in numeric.items() if s.get("count", 0) > 0}


def edges_array(stats: dict[str, Any], spec: FeatureSpec) -> np.ndarray:
    """Bin edges as float32 ``[features, n_bins + 1]`` in spec order (the histogram op's input)."""
    return np.asarray([stats["numeric"][n]["edges"] for n in spec.numeric_names], dtype=np.float32)
