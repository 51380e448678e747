"""Profile statistics against numpy, bin edges, top-K and class balance."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conveyor.ingest.profile import ProfileConfig, edges_array, profiled_ranges
from conveyor.ingest.scan import run_scan
from conveyor.ingest.source import Source
from conveyor.ingest.spec import CategoricalFeature, FeatureSpec, Label, NumericFeature

SPEC = FeatureSpec(
    label=Label("y", "multiclass", ["cat", "dog", "eel"]),
    numeric=[NumericFeature("a"), NumericFeature("b")],
    categorical=[CategoricalFeature("c", vocab=["p", "q", "r", "s"])],
)


def make(tmp_path, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n) * 3 + 1
    b = rng.exponential(2.0, n)
    a[5], a[17] = np.nan, np.inf  # quarantined: not in the statistics
    b_null = np.zeros(n, dtype=bool)
    b_null[[3, 4]] = True  # quarantined too, but counted as nulls
    c = rng.choice(["p", "q", "r", "s"], n, p=[0.5, 0.25, 0.15, 0.1])
    y = rng.choice(["cat", "dog", "eel"], n, p=[0.6, 0.3, 0.1])
    table = pa.table({"a": a, "b": pa.array(b, mask=b_null), "c": c, "y": y})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=700)
    valid = np.isfinite(a) & ~b_null
    return str(tmp_path / "d.parquet"), a, b, c, y, valid


def test_numeric_statistics_match_numpy(tmp_path):
    path, a, b, _, _, valid = make(tmp_path)
    result = run_scan(
        Source(path), SPEC, quarantine_path=tmp_path / "q.parquet", profile=ProfileConfig()
    )
    stats = result.stats
    assert stats["version"] == 1 and stats["rows"] == valid.sum() == result.accounting.rows_out
    assert stats["quantiles"]["method"] == "exact"
    for name, values, nulls in (("a", a, 0), ("b", b, 2)):
        s = stats["numeric"][name]
        v = values[valid]
        assert s["count"] == len(v) and s["nulls"] == nulls
        assert s["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert s["std"] == pytest.approx(v.std(), rel=1e-9)
        assert (s["min"], s["max"]) == (v.min(), v.max())
        edges = np.asarray(s["edges"])
        assert len(edges) == 21 and (np.diff(edges) >= 0).all()
        assert edges[0] == v.min() and edges[-1] == v.max()
        np.testing.assert_allclose(edges, np.quantile(v, np.linspace(0, 1, 21)), rtol=1e-12)
    assert edges_array(stats, SPEC).shape == (2, 21)
    assert profiled_ranges(stats)["a"] == (a[valid].min(), a[valid].max())


def test_top_k_and_class_balance(tmp_path):
    path, _, _, c, y, valid = make(tmp_path)
    stats = run_scan(
        Source(path), SPEC, quarantine_path=tmp_path / "q.parquet", profile=ProfileConfig(top_k=2)
    ).stats
    values, counts = np.unique(c[valid], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    cat = stats["categorical"]["c"]
    assert cat["count"] == valid.sum() and cat["distinct"] == 4 and cat["nulls"] == 0
    assert cat["top"] == [[values[i], int(counts[i])] for i in order[:2]]
    label = stats["label"]
    expect = {k: int((y[valid] == k).sum()) for k in ("cat", "dog", "eel")}
    assert label["class_counts"] == expect
    assert label["class_fraction"] == pytest.approx({k: v / valid.sum() for k, v in expect.items()})


def test_sampled_quantiles_keep_21_ordered_edges(tmp_path):
    path, a, *_, valid = make(tmp_path, n=5000)
    cfg = ProfileConfig(sample_size=500, seed=3)
    run = [
        run_scan(Source(path), SPEC, quarantine_path=tmp_path / f"q{i}.parquet", profile=cfg).stats
        for i in range(2)
    ]
    s = run[0]["numeric"]["a"]
    assert run[0]["quantiles"]["method"] == "sample"
    edges = np.asarray(s["edges"])
    assert len(edges) == 21 and (np.diff(edges) >= 0).all()
    assert (edges[0], edges[-1]) == (a[valid].min(), a[valid].max())
    # A sample of 500: the median within a few percent of the data's range.
    assert abs(edges[10] - np.median(a[valid])) < 0.05 * np.ptp(a[valid])
    assert run[0] == run[1]  # same data and seed: same edges


def test_integers_beyond_float64_precision_are_profiled_and_pass_their_own_ranges(tmp_path):
    """int64 ns timestamps and uint64 ids beyond 2**53 have no exact float64: the statistics
    round them, while min and max still hold every value, so validating the same data against
    its profiled ranges quarantines no row."""
    ns = pa.array([1_700_000_000_123_456_789 + i for i in range(10)], pa.int64())
    ids = pa.array([2**64 - 1 - i for i in range(10)], pa.uint64())
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"ns": ns, "id": ids, "y": [0, 1] * 5}), path)
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]), numeric=[NumericFeature("ns"), NumericFeature("id")]
    )
    result = run_scan(
        Source(str(path)), spec, quarantine_path=tmp_path / "q.parquet", profile=ProfileConfig()
    )
    stats = result.stats["numeric"]
    for name, column in (("ns", ns), ("id", ids)):
        least, most = min(column.to_pylist()), max(column.to_pylist())
        s = stats[name]
        assert s["count"] == 10 and s["mean"] == pytest.approx((least + most) / 2, rel=1e-15)
        assert s["min"] <= least and s["max"] >= most  # exact comparisons of int and float
        assert s["max"] - s["min"] <= 2 * (most - least + 1024)  # rounded, not widened further
    again = run_scan(
        Source(str(path)),
        spec,
        quarantine_path=tmp_path / "q2.parquet",
        ranges=profiled_ranges(result.stats),
    )
    assert again.accounting.rows_out == 10 and again.quarantine is None
