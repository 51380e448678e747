"""Rows/s into torch batches for 2,000,000 x 32 float32 zstd Parquet, against baselines run in
the same process: (a) pyarrow read_table + to_numpy of every column (the practical limit) and
(b) pandas.read_parquet + a torch Dataset/DataLoader over rows (the common idiom).
Targets: >= 0.8x of (a), >= 5x of (b). Usage: python benchmarks/ingest_bench.py [--rows N]"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--cols", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
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
                    self.x = frame.to_numpy(dtype=np.float32)

                def __len__(self):
                    return len(self.x)

                def __getitem__(self, i):
                    return torch.from_numpy(self.x[i, :-1]), torch.tensor(self.x[i, -1])

            rows = 0
            for x, _ in torch.utils.data.DataLoader(Rows(df), batch_size=args.batch):
                rows += x.shape[0]
            assert rows == n

        ta = best(arrow_numpy, args.repeat)
        tc = best(conveyor, args.repeat)
        tb = best(pandas_loader, 1)
    print(f"rows={n} cols={args.cols} batch={args.batch} torch_threads={torch.get_num_threads()}")
    print(f"(a) pyarrow read_table+to_numpy : {n / ta:14,.0f} rows/s")
    print(f"    conveyor StreamLoader       : {n / tc:14,.0f} rows/s")
    print(f"(b) pandas + torch DataLoader   : {n / tb:14,.0f} rows/s")
    print(f"conveyor / (a) = {ta / tc:.2f}  (target >= 0.8)")
    print(f"conveyor / (b) = {tb / tc:.1f}  (target >= 5)")


if __name__ == "__main__":
    main()
