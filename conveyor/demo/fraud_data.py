"""A synthetic card-transaction dataset with learnable fraud, for the demo and tests.

Accounts have a home country, an age and a typical spend; transactions draw a
merchant category (which sets the amount scale), a time of day with a diurnal
pattern, a channel (card present or not) and a device. About 0.5% are fraud,
more likely for amounts far above the account's usual spend, at night, abroad,
on young accounts, in bursts, without the card, and in some categories, so a
model has real structure to learn and real noise to fight.

Everything is numpy, seeded, and fast (about a second per million rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MERCHANT_CATEGORIES = (
    "grocery", "fuel", "restaurants", "apparel", "pharmacy",
    "utilities", "travel", "electronics", "jewelry", "online_gaming",
)  # fmt: skip
# Relative frequency, median amount (USD) and fraud log-odds offset per category.
_CATEGORY_MIX = np.array([0.26, 0.13, 0.17, 0.09, 0.07, 0.08, 0.05, 0.07, 0.02, 0.06])
_CATEGORY_MEDIAN = np.array([45, 50, 35, 70, 25, 110, 420, 260, 380, 30], dtype=np.float64)
_CATEGORY_RISK = np.array([-0.6, -0.3, -0.4, 0.1, -0.5, -0.8, 0.5, 0.9, 1.1, 1.2])

COUNTRIES = ("US", "GB", "DE", "FR", "CA", "BR", "IN", "NG", "CN", "MX")
_HOME_MIX = np.array([0.55, 0.1, 0.08, 0.07, 0.06, 0.04, 0.04, 0.02, 0.02, 0.02])
DEVICE_TYPES = ("pos", "atm", "mobile", "desktop")
# Share of transactions per hour of day (UTC-agnostic local time): quiet at night.
_HOUR_MIX = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 4, 5, 5.5, 6, 6.5, 6, 5.5, 5.5, 6, 6.5, 7, 6.5, 5.5, 4,
     3, 2]
)  # fmt: skip
_HOUR_MIX = _HOUR_MIX / _HOUR_MIX.sum()

NUMERIC_FEATURES = (
    "amount", "hour", "account_age_days", "txn_count_24h", "avg_amount_30d",
    "distance_from_home_km", "card_present",
)  # fmt: skip
CATEGORICAL_FEATURES = ("merchant_category", "country", "device_type")
LABEL = "is_fraud"


@dataclass
class FraudDataConfig:
    """What to generate.

    Attributes:
        rows: number of transactions (default 1,000,000).
        days: the time span, one hive partition (``day=YYYY-MM-DD``) per day (default 28).
        fraud_rate: target share of fraud (default 0.005).
        bad_rows: rows made deliberately invalid (NaN/inf amounts, missing
            categories, negative ages) for validation to quarantine (default 40).
        amount_scale: multiplies every amount; 1.0 is the training distribution.
        category_mix: overrides the merchant-category frequencies (10 numbers), for drift.
        start_day: first day, ISO date (default 2026-01-01).
        seed: random seed (default 0).
    """

    rows: int = 1_000_000
    days: int = 28
    fraud_rate: float = 0.005
    bad_rows: int = 40
    amount_scale: float = 1.0
    category_mix: tuple[float, ...] | None = None
    start_day: str = "2026-01-01"
    seed: int = 0


def _calibrate(logit: np.ndarray, rate: float) -> float:
    """The intercept that makes the mean fraud probability equal ``rate`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (1 / (1 + np.exp(-(logit + mid)))).mean() > rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def generate(config: FraudDataConfig | None = None) -> dict[str, np.ndarray]:
    """Generate the columns as numpy arrays (strings as object arrays, ``ts`` as datetime64[ms])."""
    cfg = config or FraudDataConfig()
    rng = np.random.default_rng(cfg.seed)
    n = cfg.rows

    # Accounts: a heavy-tailed activity distribution, so some accounts are busy.
    n_accounts = max(1, n // 40)
    account_weight = rng.pareto(1.5, n_accounts) + 0.1
    account = rng.choice(n_accounts, size=n, p=account_weight / account_weight.sum())
    home = rng.choice(len(COUNTRIES), size=n_accounts, p=_HOME_MIX)[account]
    age = np.minimum(rng.gamma(1.3, 700, n_accounts), 7000).astype(np.int32)[account]
    spend = np.exp(rng.normal(0.0, 0.5, n_accounts))[account]  # the account's spending level

    mix = np.asarray(cfg.category_mix or _CATEGORY_MIX, dtype=np.float64)
    category = rng.choice(len(MERCHANT_CATEGORIES), size=n, p=mix / mix.sum())
    median = _CATEGORY_MEDIAN[category] * spend
    amount = np.round(median * np.exp(rng.normal(0, 0.8, n)) * cfg.amount_scale, 2)
    usual = np.round(median * np.exp(rng.normal(0, 0.25, n)), 2)

    hour = rng.choice(24, size=n, p=_HOUR_MIX).astype(np.int8)
    day = rng.integers(0, cfg.days, size=n)
    start = np.datetime64(cfg.start_day, "ms")
    ms_in_hour = rng.integers(0, 3_600_000, size=n)
    ts = start + (day * 86_400_000 + hour.astype(np.int64) * 3_600_000 + ms_in_hour).astype(
        "timedelta64[ms]"
    )

    online = np.isin(category, [MERCHANT_CATEGORIES.index(c) for c in ("online_gaming",)])
    card_present = ((rng.random(n) < 0.72) & ~online).astype(np.int8)
    device = np.where(
        card_present == 1,
        rng.choice(2, size=n, p=[0.93, 0.07]),
        rng.choice([2, 3], size=n, p=[0.6, 0.4]),
    )
    abroad = rng.random(n) < 0.04
    country = np.where(abroad, rng.integers(0, len(COUNTRIES), size=n), home)
    foreign = country != home
    distance = np.round(np.where(foreign, rng.gamma(2.0, 2500, n), rng.gamma(1.2, 12, n)), 1)
    burst = rng.poisson(1.5 + 6 * (account_weight[account] / account_weight.max()), n)
    txn_count = burst.astype(np.int32)

    ratio = amount / np.maximum(usual, 1.0)
    logit = (
        1.3 * np.log1p(np.maximum(ratio - 1.5, 0))
        + 0.9 * ((hour <= 4) | (hour >= 23))
        + 1.3 * foreign
        + 0.9 * (age < 60)
        + 0.3 * np.log1p(txn_count)
        + 0.8 * (card_present == 0)
        + _CATEGORY_RISK[category]
        + 0.25 * np.log1p(distance / 100)
    )
    is_fraud = rng.random(n) < 1 / (1 + np.exp(-(logit + _calibrate(logit, cfg.fraud_rate))))

    columns: dict[str, np.ndarray] = {
        "transaction_id": np.arange(n, dtype=np.int64),
        "ts": ts,
        "amount": amount,
        "hour": hour,
        "merchant_category": np.array(MERCHANT_CATEGORIES, dtype=object)[category],
        "country": np.array(COUNTRIES, dtype=object)[country],
        "device_type": np.array(DEVICE_TYPES, dtype=object)[device],
        "card_present": card_present,
        "account_age_days": age,
        "txn_count_24h": txn_count,
        "avg_amount_30d": usual,
        "distance_from_home_km": distance,
        LABEL: is_fraud.astype(np.int8),
    }
    _spoil(columns, cfg.bad_rows, rng)
    return columns


def _spoil(columns: dict[str, np.ndarray], count: int, rng: np.random.Generator) -> None:
    """Make ``count`` rows invalid in ways real feeds are: NaN, inf, missing values."""
    n = len(columns["amount"])
    if count <= 0 or n == 0:
        return
    rows = rng.choice(n, size=min(count, n), replace=False)
    kinds = np.arange(len(rows)) % 4
    columns["amount"][rows[kinds == 0]] = np.nan
    columns["amount"][rows[kinds == 1]] = np.inf
    columns["merchant_category"][rows[kinds == 2]] = None
    columns["distance_from_home_km"][rows[kinds == 3]] = -np.inf


def to_table(columns: dict[str, np.ndarray]):
    """The columns as a pyarrow Table with a ``day`` partition column."""
    import pyarrow as pa

    arrays = {}
    for name, values in columns.items():
        if name == "ts":
            arrays[name] = pa.array(values, type=pa.timestamp("ms", tz="UTC"))
        elif values.dtype == object:
            arrays[name] = pa.array(values, type=pa.string())
        else:
            arrays[name] = pa.array(values)
    table = pa.table(arrays)
    day = columns["ts"].astype("datetime64[D]").astype(str)
    return table.append_column("day", pa.array(day, type=pa.string()))


def write_dataset(path: str, config: FraudDataConfig | None = None) -> int:
    """Write the dataset as hive-partitioned zstd Parquet under ``path``; returns rows written."""
    import pyarrow.dataset as ds

    table = to_table(generate(config))
    ds.write_dataset(
        table,
        path,
        format="parquet",
        partitioning=ds.partitioning(table.select(["day"]).schema, flavor="hive"),
        file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
        existing_data_behavior="overwrite_or_ignore",
        basename_template="part-{i}.parquet",
    )
    return table.num_rows
