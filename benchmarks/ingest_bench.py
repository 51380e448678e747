"""Rows/s into torch batches for 2,000,000 x 32 float32 zstd Parquet, against baselines run in
the same process: (a) pyarrow read_table + to_numpy of every column (the practical limit) and
(b) pandas.read_parquet + a torch Dataset/DataLoader over rows (the common idiom).
Targets: >= 0.8x of (a), >= 5x of (b). Usage: python benchmarks/ingest_bench.py [--rows N]

The machine's cores are shared, so (a) and conveyor run in alternation (a, conveyor, a, ...)
and the ratio printed is the median over those pairs, each pair timed under the same load;
rows/s are from each contender's best run."""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--cols", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5, help="(a)/conveyor pairs (default 5)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    # Zero rows would time nothing and print ratios of empty timings; one column is the
    # label alone.
    for flag, value, least in (
        ("--rows", args.rows, 1),
        ("--cols", args.cols, 2),
        ("--batch", args.batch, 1),
        ("--repeat", args.repeat, 1),
    ):
        if value < least:
            raise SystemExit(f"ingest_bench.py: {flag} must be >= {least}, got {value}")
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(args.cols)]
    table = pa.table({n: rng.standard_normal(args.rows, dtype=np.float32) for n in names})
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.parquet")
        pq.write_table(table, path, compression="zstd", row_group_size=131_072)
        del table
        n = args.rows

        def arrow_numpy():
            t = pq.read_table(path)
            return [t.column(c).to_numpy() for c in t.column_names]

        spec = FeatureSpec(
            label=Label(names[-1], "regression"), numeric=[NumericFeature(c) for c in names[:-1]]
        )

        def conveyor():
            rows = 0
            for b in StreamLoader(path, spec, batch_size=args.batch):
                rows += b.features.shape[0]
            assert rows == n

        def pandas_loader():
            import pandas as pd

            df = pd.read_parquet(path)

            class Rows(torch.utils.data.Dataset):
                def __init__(self, frame):
                    self.x = frame.to_numpy(dtype=np.float32, copy=True)

                def __len__(self):
                    return len(self.x)

                def __getitem__(self, i):
                    return torch.from_numpy(self.x[i, :-1]), torch.tensor(self.x[i, -1])

            rows = 0
            for x, _ in torch.utils.data.DataLoader(Rows(df), batch_size=args.batch):
                rows += x.shape[0]
            assert rows == n

        arrow_numpy(), conveyor()  # warm the page cache and the allocator
        pairs = [(timed(arrow_numpy), timed(conveyor)) for _ in range(args.repeat)]
        tb = timed(pandas_loader)
        tc_b = timed(conveyor)  # the (b) ratio from adjacent runs too
    ta, tc = min(p[0] for p in pairs), min(p[1] for p in pairs)
    ratio_a = statistics.median(a / c for a, c in pairs)
    print(f"rows={n} cols={args.cols} batch={args.batch} torch_threads={torch.get_num_threads()}")
    print(f"(a) pyarrow read_table+to_numpy : {n / ta:14,.0f} rows/s")
    print(f"    conveyor StreamLoader       : {n / tc:14,.0f} rows/s")
    print(f"(b) pandas + torch DataLoader   : {n / tb:14,.0f} rows/s")
    print(
        f"conveyor / (a) = {ratio_a:.2f}  (median of {args.repeat} adjacent pairs; target >= 0.8)"
    )
    print(f"conveyor / (b) = {tb / tc_b:.1f}  (adjacent runs; target >= 5)")
    if args.json:
        figures = {
            "rows": n,
            "cols": args.cols,
            "batch": args.batch,
            "torch_threads": torch.get_num_threads(),
            "a_pyarrow_rows_per_s": round(n / ta),
            "loader_rows_per_s": round(n / tc),
            "b_pandas_rows_per_s": round(n / tb),
            "loader_over_a": round(ratio_a, 3),
            "loader_over_b": round(tb / tc_b, 2),
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
