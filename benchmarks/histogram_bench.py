"""Histogram update against its references, measured in one run.

    python benchmarks/histogram_bench.py [--rows 1000000] [--features 32] [--bins 20] [--repeat 5]
    python benchmarks/histogram_bench.py --device cuda [--rows 16000000]

CPU (default): conveyor._C's C++/OpenMP op against the numpy reference; prints
the median time of each over ``--repeat`` runs, values/s and the speed-up
numpy_time / cpp_time.

CUDA: conveyor's CUDA op (and its Triton kernel) against a torch eager
reference (searchsorted + bincount per feature) on the same device, timed with
CUDA events, plus the device's measured copy bandwidth, so the op's read
bandwidth is reported as a fraction of what the memory system delivers.
``--cuda-variants`` also times the CUDA kernel with the search kernel forced
(no lookup table), with tables of 256, 512 and 1024 cells per feature, and with
the default table and its values streamed through shared memory by
asynchronous copies, 2 to 8 in flight per thread (``stages``).

Data: standard normal values with 1% NaN and 0.1% +inf, edges at the data's
quantiles (as drift profiling makes them). Counts are checked for equality
between implementations before any figure is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime

import numpy as np

from conveyor import _C
from conveyor.kernels import dispatch, histogram_slots, histogram_update
from conveyor.kernels.histogram import _histogram_update_cuda


def make_data(rows: int, features: int, bins: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, features), dtype=np.float32)
    values[rng.random((rows, features)) < 0.01] = np.nan
    values[rng.random((rows, features)) < 0.001] = np.inf
    sample = values[: min(rows, 100_000)]
    q = np.linspace(0.0, 1.0, bins + 1)
    edges = np.nanquantile(np.where(np.isfinite(sample), sample, np.nan), q, axis=0).T
    return values, np.ascontiguousarray(edges, dtype=np.float32)


def time_impl(values, edges, impl: str, repeat: int) -> tuple[float, np.ndarray]:
    shape = (values.shape[1], histogram_slots(edges.shape[1]))
    times = []
    counts = np.zeros(shape, dtype=np.int64)
    for _ in range(repeat):
        counts = np.zeros(shape, dtype=np.int64)
        t0 = time.perf_counter()
        histogram_update(values, edges, counts, impl=impl, check_edges=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), counts


def torch_reference(values, edges):
    """Per-feature searchsorted + bincount in torch eager: the GPU baseline."""
    import torch

    n_edges = edges.shape[1]
    out = torch.zeros(
        (values.shape[1], histogram_slots(n_edges)), dtype=torch.int64, device=values.device
    )
    for f in range(values.shape[1]):
        v = values[:, f].contiguous()
        slot = torch.searchsorted(edges[f].contiguous(), v, right=True)
        slot = torch.where(v == edges[f, -1], n_edges - 1, slot)
        slot = torch.where(torch.isnan(v), n_edges + 1, slot)
        out[f] += torch.bincount(slot, minlength=histogram_slots(n_edges))
    return out


def cuda_main(args) -> int:
    import torch

    if not torch.cuda.is_available() or _C.cuda_device_count() == 0:
        print("no CUDA device visible (torch or conveyor._C)", file=sys.stderr)
        return 2
    values_np, edges_np = make_data(args.rows, args.features, args.bins)
    values = torch.from_numpy(values_np).cuda()
    edges = torch.from_numpy(edges_np).cuda()

    def bench(fn, repeat):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeat):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)

    got = histogram_update(values, edges, check_edges=False)
    ref = torch_reference(values, edges)
    if not torch.equal(got, ref):
        print("MISMATCH: CUDA counts differ from the torch reference", file=sys.stderr)
        return 1
    counts = torch.zeros_like(got)
    t_cuda = bench(lambda: histogram_update(values, edges, counts, check_edges=False), args.repeat)
    t_torch = bench(lambda: torch_reference(values, edges), max(1, args.repeat // 2))
    extra = {}  # further rows: name -> seconds
    if dispatch.available("histogram", "triton", "cuda", torch.float32):
        if not torch.equal(histogram_update(values, edges, impl="triton"), ref):
            print("MISMATCH: Triton counts differ from the torch reference", file=sys.stderr)
            return 1
        extra["triton"] = bench(
            lambda: histogram_update(values, edges, counts, impl="triton", check_edges=False),
            args.repeat,
        )
    # (lut_cells, stages): the search kernel, table sizes, then the default table
    # with its values streamed through shared memory by asynchronous copies.
    variants = [(-1, -1), (256, -1), (512, -1), (1024, -1), *((0, k) for k in (2, 3, 4, 6, 8))]
    for cells, stages in variants if args.cuda_variants else ():
        name = (
            "cuda search"
            if cells < 0
            else f"cuda {stages} stages"
            if stages > 0
            else f"cuda {cells} cells"
        )

        def run(cells=cells, stages=stages):
            return _histogram_update_cuda(
                values, edges, counts, "cuda", False, lut_cells=cells, stages=stages
            )

        counts.zero_()
        if not torch.equal(run(), ref):
            print(f"MISMATCH: {name} counts differ from the torch reference", file=sys.stderr)
            return 1
        extra[name] = bench(run, args.repeat)
    src = torch.empty(values.numel(), dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    t_copy = bench(lambda: dst.copy_(src), args.repeat)

    nbytes = values.numel() * 4
    copy_gbs = 2 * nbytes / t_copy / 1e9  # read + write
    op_gbs = nbytes / t_cuda / 1e9
    name = torch.cuda.get_device_name()
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "device": name,
        "shape": [args.rows, args.features],
        "edges": edges.shape[1],
        "cuda_s": t_cuda,
        "torch_s": t_torch,
        "speedup_vs_torch": t_torch / t_cuda,
        "op_read_gbs": op_gbs,
        "copy_gbs": copy_gbs,
        "fraction_of_copy_bandwidth": op_gbs / copy_gbs,
        "variants_s": extra,
    }
    print(
        f"histogram_update {args.rows} x {args.features} float32 on {name}, "
        f"{edges.shape[1]} edges, median of {args.repeat}"
    )
    print(f"  {'impl':<12} {'time ms':>10} {'GB/s':>8}")
    print(f"  {'torch eager':<12} {t_torch * 1e3:>10.3f} {nbytes / t_torch / 1e9:>8.0f}")
    print(f"  {'cuda':<12} {t_cuda * 1e3:>10.3f} {op_gbs:>8.0f}")
    for name, t in extra.items():
        gbs = nbytes / t / 1e9
        print(f"  {name:<16} {t * 1e3:>6.3f} {gbs:>8.0f}  ({gbs / copy_gbs:.0%} of copy)")
    print(
        f"  device copy bandwidth {copy_gbs:.0f} GB/s (read+write); "
        f"op at {op_gbs / copy_gbs:.0%} of it; {t_torch / t_cuda:.1f}x torch eager"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="default 1000000")
    parser.add_argument("--features", type=int, default=32, help="default 32")
    parser.add_argument(
        "--bins", type=int, default=20, help="bins per feature, bins + 1 edges (default 20)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per implementation, median (default 5)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--cuda-variants",
        action="store_true",
        help="CUDA: also time the search kernel, lookup tables of 256/512/1024 cells and "
        "staged (asynchronous-copy) loads",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    for flag, value in (("--rows", args.rows), ("--features", args.features)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.bins < 1:  # the op needs at least 2 edges per feature
        parser.error(
            f"--bins must be >= 1 (bins + 1 edges; the minimum is 2 edges), got {args.bins}"
        )
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.device == "cuda":
        return cuda_main(args)

    values, edges = make_data(args.rows, args.features, args.bins)
    # Warm up both (page-in, thread pool start), then measure.
    histogram_update(values[:1000], edges, impl="cpp")
    histogram_update(values[:1000], edges, impl="reference")
    t_ref, c_ref = time_impl(values, edges, "reference", args.repeat)
    t_cpp, c_cpp = time_impl(values, edges, "cpp", args.repeat)
    if not np.array_equal(c_ref, c_cpp):
        print("MISMATCH: cpp counts differ from the numpy reference", file=sys.stderr)
        return 1

    n = args.rows * args.features
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": _C.get_num_threads(),
        "shape": [args.rows, args.features],
        "edges": edges.shape[1],
        "numpy_s": t_ref,
        "cpp_s": t_cpp,
        "numpy_values_per_s": n / t_ref,
        "cpp_values_per_s": n / t_cpp,
        "speedup_vs_numpy": t_ref / t_cpp,
    }
    print(
        f"histogram_update {args.rows} x {args.features} float32, {edges.shape[1]} edges, "
        f"{_C.get_num_threads()} threads, median of {args.repeat}"
    )
    print(f"  {'impl':<10} {'time ms':>10} {'Mvalues/s':>10}")
    print(f"  {'numpy':<10} {t_ref * 1e3:>10.1f} {n / t_ref / 1e6:>10.1f}")
    print(f"  {'cpp':<10} {t_cpp * 1e3:>10.1f} {n / t_cpp / 1e6:>10.1f}")
    print(f"  ratio cpp/numpy speed: {t_ref / t_cpp:.1f}x (target >= 10x)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
