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
