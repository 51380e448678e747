"""The demo's synthetic card-fraud data: seeded, with the promised rate, structure and bad rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conveyor.demo.fraud_data import (
    CATEGORICAL_FEATURES,
    LABEL,
    MERCHANT_CATEGORIES,
    NUMERIC_FEATURES,
    FraudDataConfig,
    generate,
    write_dataset,
)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = generate(FraudDataConfig(rows=5000, seed=3))
    b = generate(FraudDataConfig(rows=5000, seed=3))
    c = generate(FraudDataConfig(rows=5000, seed=4))
    assert all(np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a)
    assert not np.array_equal(a["amount"], c["amount"], equal_nan=True)


def test_fraud_rate_and_columns() -> None:
    cols = generate(FraudDataConfig(rows=200_000, bad_rows=0))
    assert set(NUMERIC_FEATURES) | set(CATEGORICAL_FEATURES) | {LABEL} <= set(cols)
    assert 0.004 < cols[LABEL].mean() < 0.006
    assert len(np.unique(cols["transaction_id"])) == 200_000
    assert set(cols["merchant_category"]) == set(MERCHANT_CATEGORIES)


def test_fraud_is_learnable_from_the_features() -> None:
    # Fraud must depend on the features: the riskiest slice has a far higher rate.
    cols = generate(FraudDataConfig(rows=200_000, bad_rows=0))
    y = cols[LABEL].astype(bool)
    risky = (cols["card_present"] == 0) & (cols["amount"] > 3 * cols["avg_amount_30d"])
    assert y[risky].mean() > 5 * y[~risky].mean()


def test_bad_rows_are_planted() -> None:
    cols = generate(FraudDataConfig(rows=10_000, bad_rows=40))
    bad = (
        ~np.isfinite(cols["amount"])
        | ~np.isfinite(cols["distance_from_home_km"])
        | np.array([v is None for v in cols["merchant_category"]])
    )
    assert bad.sum() == 40


def test_drift_knobs_move_the_distribution() -> None:
    base = generate(FraudDataConfig(rows=50_000, bad_rows=0))
    mix = [0.05] * 7 + [0.3, 0.2, 0.3]
    moved = generate(FraudDataConfig(rows=50_000, bad_rows=0, amount_scale=1.5, category_mix=mix))
    assert np.median(moved["amount"]) > 1.3 * np.median(base["amount"])
    assert (moved["merchant_category"] == "electronics").mean() > 0.2


def test_write_dataset_is_hive_partitioned_parquet(tmp_path: Path) -> None:
    ds = pytest.importorskip("pyarrow.dataset")
    rows = write_dataset(str(tmp_path / "data"), FraudDataConfig(rows=3000, days=3))
    assert rows == 3000
    days = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert days == ["day=2026-01-01", "day=2026-01-02", "day=2026-01-03"]
    table = ds.dataset(tmp_path / "data", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 3000
    assert str(table.schema.field("ts").type) == "timestamp[ms, tz=UTC]"
