"""Fused ops against torch eager and torch.compile of the reference, in one run.

    python benchmarks/kernels/bench_ops.py [--threads 1] [--ops linear,embedding_bag,...]
    python benchmarks/kernels/bench_ops.py --device cuda [--json results.json]

For every op, shape and pass (``fwd``, ``fwd+bwd``) it times each available
implementation (CPU: ``cpp``; CUDA: ``triton``, ``cuda``) against ``eager`` (the
torch reference, i.e. torch's own op) and ``compile`` (``torch.compile`` of the
reference). Implementations are timed round-robin (one batch of calls each,
``--rounds`` times, fastest batch kept) so drift on a shared machine hits them
alike. The ceilings are measured at the start (the fractions use these) and
again at the end (printed and saved, to show how much the machine drifted).
Each row reports the fastest batch's time per call, the bytes the op must move and its FLOPs,
hence GB/s and GFLOP/s, as fractions of this run's measured ceilings (a large
copy and a large matmul, measured once), and the speed-up over eager.
Results (forward outputs, and the gradients of the fwd+bwd rows) are checked against
eager before any time is printed; torch.compile's forward too.
Tests never depend on this script.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import torch
import torch.nn.functional as F

from conveyor import _C
from conveyor.kernels import (
    dispatch,
    embedding_bag,
    fused_linear,
    histogram_update,
    layer_norm,
    linear_reference,
)

# --large-only: just the GPU-sized shapes (the torch.compile comparison, whose
# compilations cost seconds per shape, runs on these).
LARGE_ONLY = False
# --embedding-bag-shapes: (V, D, B, L) tuples replacing embedding_bag's defaults.
EMBEDDING_BAG_SHAPES: list[tuple[int, int, int, int]] = []


@dataclass
class Case:
    """One op at one shape and pass; ``run[impl]`` performs the work once."""

    op: str
    shape: str
    dtype: str
    pass_: str
    bytes: float
    flops: float
    run: dict[str, Callable[[], object]] = field(default_factory=dict)
    default: str = ""


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    pass_: str
    impl: str
    ms: float
    gbs: float
    gflops: float
    frac_copy: float
    frac_matmul: float
    speedup_vs_eager: float
    default: bool


class Timer:
    """Seconds per call of timed batches; CUDA synchronisation around them on GPU."""

    def __init__(self, device: str, min_time: float) -> None:
        self.device, self.min_time = device, min_time

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def batch(self, fn: Callable[[], object], calls: int) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / calls

    def calls_for(self, fn: Callable[[], object]) -> int:
        fn()
        t = max(self.batch(fn, 1), 1e-6)
        return max(1, min(1000, int(self.min_time / t)))

    def compare(self, fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
        """Fastest batch of each, batches interleaved across implementations.

        The minimum, not the median: on a machine shared with other jobs the
        noise only ever adds time, and interleaving exposes every
        implementation to the same quiet moments.
        """
        calls = {name: self.calls_for(fn) for name, fn in fns.items()}
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                samples[name].append(self.batch(fn, calls[name]))
        return {name: min(s) for name, s in samples.items()}


def ceilings(device: str, timer: Timer) -> dict[str, float]:
    """Copy bandwidth (read + write, GB/s) and matmul throughput (GFLOP/s) of this run.

    The matmul ceiling is the faster of ``torch.matmul`` and (on CPU) conveyor's
    C++ GEMM on one large square product.
    """
    n = (256 if device == "cuda" else 32) * 2**20 // 4  # float32 elements
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = timer.compare({"copy": lambda: dst.copy_(src)}, rounds=9)["copy"]
    out = {"copy_gbs": 2 * src.numel() * 4 / t / 1e9}
    size = 8192 if device == "cuda" else 1536
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
    for dt in dtypes:
        a = torch.randn(size, size, device=device, dtype=dt)
        b = torch.randn(size, size, device=device, dtype=dt)
        fns = {"mm": lambda a=a, b=b: a @ b}
        if dispatch.available("linear", "cpp", device, dt):
            # On CPU conveyor's own GEMM can beat torch's BLAS: the ceiling is the faster.
            fns["cpp"] = lambda a=a, b=b: fused_linear(a, b, impl="cpp")
        t = min(timer.compare(fns, rounds=9).values())
        out[f"matmul_{str(dt).split('.')[-1]}_gflops"] = 2 * size**3 / t / 1e9
    return out


def _raise_recompile_limit() -> None:
    # Every shape is a new specialisation of the same reference function; the
    # default limit (8) would silently fall back to eager after eight.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 1024)


def _compiled(fn: Callable, note: list[str], want: torch.Tensor | None = None) -> Callable | None:
    """``torch.compile(fn)``, run once (and compared with ``want`` when given); None with a
    note when it cannot compile or does not match."""
    try:
        compiled = torch.compile(fn, dynamic=False)
        got = compiled()
        if want is not None:
            _assert_close(got, want)
        return compiled
    except Exception as exc:  # a missing C++ compiler, an unsupported op, ...
        note.append(f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        return None


def _impls(op: str, device: str, dtype: torch.dtype) -> list[str]:
    return [
        i for i in ("cpp", "triton", "cuda", "cublaslt") if dispatch.available(op, i, device, dtype)
    ]


def _working(
    op: str, shape: str, device: str, dtype: torch.dtype, note: list[str], check: Callable
) -> list[str]:
    """Implementations of ``op`` that run here and match the reference (``check(impl)``
    raises otherwise); the others are left out of the timings with a note, so one
    kernel that fails on a new card or compiler costs its own rows, not the run."""
    ok = []
    for impl in _impls(op, device, dtype):
        try:
            check(impl)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            note.append(f"{op} {impl} left out at {shape} {dtype}: {type(exc).__name__}: {msg}")
            continue
        ok.append(impl)
    return ok


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within 2% of the largest reference value, 5% in 16-bit dtypes (gradients sum over
    many rows, so an element-wise absolute tolerance would be wrong for them)."""
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    err = float((got.detach().float() - want.detach().float()).abs().max()) if want.numel() else 0.0
    tol = 5e-2 if want.dtype in (torch.float16, torch.bfloat16) else 2e-2
    if got.shape != want.shape or not err <= tol * max(scale, 1.0):
        raise AssertionError(f"differs from the reference by {err:.3g} (scale {scale:.3g})")


def _grads(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of ``leaves`` for one forward and backward with ones (leaves reset)."""
    y = forward()
    y.backward(torch.ones_like(y))
    out = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    return out


def _check_grads(forward: Callable, reference: Callable, leaves: list[torch.Tensor]) -> None:
    for got, want in zip(_grads(forward, leaves), _grads(reference, leaves), strict=True):
        _assert_close(got, want)


def _with_backward(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor]):
    """One forward and backward pass, gradients of ``leaves`` discarded."""

    def run():
        y = forward()
        y.backward(torch.ones_like(y))
        for t in leaves:
            t.grad = None

    return run


def _sixteenths(t: torch.Tensor) -> torch.Tensor:
    return (t * 16).round() / 16


def linear_cases(device, dtype, note, compile_ref) -> Iterator[Case]:
    shapes = [
        (32, 256, 256),
        (4, 1024, 1024),
        (512, 512, 512),
        (4096, 256, 256),
        (2048, 1024, 1024),
    ]
    if device == "cuda":
        # A square compute-bound GEMM, then the trainer's MLP layers (64 -> 256
        # -> 256) on a large batch, where the GEMM is memory-bound and fusing
        # the bias and activation saves passes over the output.
        large = [(8192, 4096, 4096), (262144, 256, 256)]
        rest = [(262144, 64, 256), (64, 4096, 4096)]
        shapes = large + ([] if LARGE_ONLY else rest + shapes)
    es = torch.finfo(dtype).bits // 8
    cases: list[Case] = []

    # One function call per shape, so each case's closures keep their own tensors.
    def build(M: int, K: int, N: int, act: str) -> None:
        if True:  # (keeps the body's indentation of the loop it came from)
            # Multiples of 1/16 (weights of 1/16 over a power of two near sqrt(K)): every
            # product and sum in the GEMM is exact, so both sides compute the same
            # pre-activations. With arbitrary floats one that falls within rounding of 0
            # flips ReLU's mask on one side only, and the gradient check then fails by a
            # whole weight row (it dropped the 2048x1024->1024 relu case once).
            x = _sixteenths(torch.randn(M, K, device=device, dtype=dtype))
            w = _sixteenths(torch.randn(N, K, device=device, dtype=dtype)) / 2 ** round(
                math.log2(math.sqrt(K))
            )
            b = _sixteenths(torch.randn(N, device=device, dtype=dtype))
            shape = f"{M}x{K}->{N} {act}"
            ref = fused_linear(x, w, b, act, impl="reference")
            xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))

            def check(impl: str) -> None:
                got = fused_linear(x, w, b, act, impl=impl)
                torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
                _check_grads(
                    lambda: fused_linear(xg, wg, bg, act, impl=impl),
                    lambda: linear_reference(xg, wg, bg, act),
                    [xg, wg, bg],
                )

            impls = _working("linear", shape, device, dtype, note, check)
            fwd = Case(
                "linear",
                shape,
                str(dtype)[6:],
                "fwd",
                es * (M * K + N * K + N + M * N),
                2.0 * M * N * K,
            )
            detail = (M, N, K, act)
            fwd.default = dispatch.choose("linear", device, dtype, work=M * N * K, detail=detail)
            fwd.run["eager"] = lambda x=x, w=w, b=b, a=act: linear_reference(x, w, b, a)
            if compile_ref:
                c = _compiled(lambda x=x, w=w, b=b, a=act: linear_reference(x, w, b, a), note, ref)
                if c:
                    fwd.run["compile"] = c
            for impl in impls:
                fwd.run[impl] = lambda x=x, w=w, b=b, a=act, i=impl: fused_linear(
                    x, w, b, a, impl=i
                )
            cases.append(fwd)
            # Training step: forward keeping z, backward with all three gradients.
            bw = Case(
                "linear", shape, str(dtype)[6:], "fwd+bwd",
                es * (3 * M * K + 3 * N * K + 2 * N + 4 * M * N), 6.0 * M * N * K,
            )  # fmt: skip
            bw.default = dispatch.choose(
                "linear", device, dtype, work=M * N * K, grad=True, detail=detail
            )
            bw.run["eager"] = _with_backward(
                lambda a=act: linear_reference(xg, wg, bg, a), [xg, wg, bg]
            )
            if compile_ref:
                cf = torch.compile(lambda a=act: linear_reference(xg, wg, bg, a), dynamic=False)
                c = _compiled(_with_backward(cf, [xg, wg, bg]), note)
                if c:
                    bw.run["compile"] = _with_backward(cf, [xg, wg, bg])
            for impl in impls:
                bw.run[impl] = _with_backward(
                    lambda a=act, i=impl: fused_linear(xg, wg, bg, a, impl=i), [xg, wg, bg]
                )
            cases.append(bw)

    for M, K, N in shapes:
        for act in ("relu", "gelu"):
            build(M, K, N, act)
            yield from cases
            cases.clear()


def embedding_bag_cases(device, dtype, note, compile_ref) -> Iterator[Case]:
    shapes = [(100_000, 64, 2048, 20), (100_000, 16, 8192, 10), (1_000_000, 128, 4096, 40)]
    if EMBEDDING_BAG_SHAPES:
        shapes = EMBEDDING_BAG_SHAPES
    elif device == "cuda":
        shapes = [(4_000_000, 128, 65536, 40)] + ([] if LARGE_ONLY else shapes)
    es = torch.finfo(dtype).bits // 8
    cases: list[Case] = []
    g = torch.Generator(device="cpu").manual_seed(0)

    def build(V: int, D: int, B: int, L: int) -> None:
        weight = torch.randn(V, D, dtype=dtype, device=device)  # 2 GB on GPU: make it there
        nnz = B * L
        indices = torch.randint(0, V, (nnz,), generator=g).to(device)
        offsets = torch.arange(0, nnz, L).to(device)
        psw = torch.rand(nnz, dtype=dtype, device=device)
        for mode, p in (("sum", None), ("mean", None), ("sum", psw)):
            shape = f"V={V} D={D} B={B} L={L} {mode}{'+psw' if p is not None else ''}"
            ref = embedding_bag(indices, weight, offsets, mode, p, impl="reference")

            def check(impl: str, mode=mode, p=p, ref=ref) -> None:
                got = embedding_bag(indices, weight, offsets, mode, p, impl=impl)
                torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
                if p is None:  # the rows timed with a backward
                    wg = weight.clone().requires_grad_()
                    _check_grads(
                        lambda: embedding_bag(indices, wg, offsets, mode, impl=impl),
                        lambda: F.embedding_bag(indices, wg, offsets, mode=mode),
                        [wg],
                    )

            impls = _working("embedding_bag", shape, device, dtype, note, check)
            moved = es * (nnz * D + B * D) + 8 * (nnz + B) + (es * nnz if p is not None else 0)
            # One add per gathered value (and a multiply with per-sample weights).
            per = 2.0 if p is not None else 1.0
            fwd = Case("embedding_bag", shape, str(dtype)[6:], "fwd", moved, per * nnz * D)
            fwd.default = dispatch.choose(
                "embedding_bag", device, dtype, work=nnz * D, detail=(mode, D)
            )

            def eager(m=mode, p=p):
                return F.embedding_bag(indices, weight, offsets, mode=m, per_sample_weights=p)

            fwd.run["eager"] = eager
            if compile_ref:
                c = _compiled(eager, note, ref)
                if c:
                    fwd.run["compile"] = c
            for impl in impls:
                fwd.run[impl] = lambda m=mode, p=p, i=impl: embedding_bag(
                    indices, weight, offsets, m, p, impl=i
                )
            cases.append(fwd)
            if p is None:  # training pass on the plain modes: dense grad of the table
                wg = weight.clone().requires_grad_()
                bw = Case(
                    "embedding_bag", shape, str(dtype)[6:], "fwd+bwd",
                    moved + es * (2 * V * D + nnz * D + B * D) + 8 * nnz, 2.0 * nnz * D,
                )  # fmt: skip
                bw.default = dispatch.choose(
                    "embedding_bag", device, dtype, work=nnz * D, grad=True, detail=(mode, D)
                )
                bw.run["eager"] = _with_backward(
                    lambda m=mode, wg=wg: F.embedding_bag(indices, wg, offsets, mode=m), [wg]
                )
                for impl in impls:
                    bw.run[impl] = _with_backward(
                        lambda m=mode, i=impl, wg=wg: embedding_bag(
                            indices, wg, offsets, m, impl=i
                        ),
                        [wg],
                    )
                cases.append(bw)

    for V, D, B, L in shapes:
        build(V, D, B, L)
        yield from cases
        cases.clear()


def layer_norm_cases(device, dtype, note, compile_ref) -> Iterator[Case]:
    shapes = [(64, 256), (4096, 256), (1024, 1024), (256, 4096), (16384, 512)]
    if device == "cuda":
        shapes = [(65536, 1024), (16384, 8192)] + ([] if LARGE_ONLY else shapes)
    es = torch.finfo(dtype).bits // 8
    cases: list[Case] = []

    def build(M: int, N: int) -> None:
        x = torch.randn(M, N, device=device, dtype=dtype)
        w = torch.randn(N, device=device, dtype=dtype)
        b = torch.randn(N, device=device, dtype=dtype)
        ref = F.layer_norm(x, (N,), w, b)
        shape = f"{M}x{N}"
        xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))

        def check(impl: str) -> None:
            torch.testing.assert_close(layer_norm(x, N, w, b, impl=impl), ref, rtol=2e-2, atol=2e-2)
            _check_grads(
                lambda: layer_norm(xg, N, wg, bg, impl=impl),
                lambda: F.layer_norm(xg, (N,), wg, bg),
                [xg, wg, bg],
            )

        impls = _working("layer_norm", shape, device, dtype, note, check)
        fwd = Case(
            "layer_norm", shape, str(dtype)[6:], "fwd", es * (2 * M * N + 2 * N), 8.0 * M * N
        )
        fwd.default = dispatch.choose("layer_norm", device, dtype, work=M * N)
        fwd.run["eager"] = lambda x=x, w=w, b=b, n=N: F.layer_norm(x, (n,), w, b)
        if compile_ref:
            c = _compiled(lambda x=x, w=w, b=b, n=N: F.layer_norm(x, (n,), w, b), note, ref)
            if c:
                fwd.run["compile"] = c
        for impl in impls:
            fwd.run[impl] = lambda x=x, w=w, b=b, n=N, i=impl: layer_norm(x, n, w, b, impl=i)
        cases.append(fwd)
        bw = Case(
            "layer_norm", shape, str(dtype)[6:], "fwd+bwd", es * (5 * M * N + 6 * N), 20.0 * M * N
        )
        bw.default = dispatch.choose("layer_norm", device, dtype, work=M * N, grad=True)
        bw.run["eager"] = _with_backward(lambda n=N: F.layer_norm(xg, (n,), wg, bg), [xg, wg, bg])
        if compile_ref:
            cf = torch.compile(lambda n=N: F.layer_norm(xg, (n,), wg, bg), dynamic=False)
            if _compiled(_with_backward(cf, [xg, wg, bg]), note):
                bw.run["compile"] = _with_backward(cf, [xg, wg, bg])
        for impl in impls:
            bw.run[impl] = _with_backward(
                lambda n=N, i=impl: layer_norm(xg, n, wg, bg, impl=i), [xg, wg, bg]
            )
        cases.append(bw)

    for M, N in shapes:
        build(M, N)
        yield from cases
        cases.clear()


def histogram_cases(device, dtype, note, compile_ref) -> list[Case]:
    rows, features, n_edges = (16_000_000 if device == "cuda" else 1_000_000), 32, 21
    rng = np.random.default_rng(0)
    edges_np = np.sort(rng.standard_normal((features, n_edges)).astype(np.float32), axis=1)
    if device == "cuda":  # 512M values: generated on the device, seconds faster than numpy
        g = torch.Generator(device="cuda").manual_seed(0)
        values_t = torch.randn(rows, features, device="cuda", generator=g)
        values_t[torch.rand(rows, features, device="cuda", generator=g) < 0.01] = float("nan")
    else:
        values_np = rng.standard_normal((rows, features), dtype=np.float32)
        values_np[rng.random((rows, features)) < 0.01] = np.nan
    case = Case(
        "histogram",
        f"{rows}x{features} {n_edges} edges",
        "float32",
        "fwd",
        4.0 * rows * features,
        0.0,
    )
    if device == "cuda":
        values, edges = values_t, torch.from_numpy(edges_np).cuda()

        def eager():  # per-feature searchsorted + bincount: what torch offers
            n = edges.shape[1]
            out = torch.zeros((features, n + 2), dtype=torch.int64, device="cuda")
            for f in range(features):
                v = values[:, f].contiguous()
                s = torch.searchsorted(edges[f].contiguous(), v, right=True)
                s = torch.where(v == edges[f, -1], n - 1, s)
                s = torch.where(torch.isnan(v), n + 1, s)
                out[f] += torch.bincount(s, minlength=n + 2)
            return out

        ref = eager()
        case.run["eager"] = eager

        def check(impl: str) -> None:
            got = histogram_update(values, edges, impl=impl, check_edges=False)
            assert torch.equal(got, ref), f"histogram {impl} differs from eager"

        for impl in _working("histogram", case.shape, "cuda", torch.float32, note, check):
            case.run[impl] = lambda i=impl: histogram_update(
                values, edges, impl=i, check_edges=False
            )
        case.default = dispatch.choose("histogram", "cuda", torch.float32)
    else:  # eager here is the numpy reference (torch has no per-feature histogram op)
        ref = histogram_update(values_np, edges_np, impl="reference")
        assert np.array_equal(histogram_update(values_np, edges_np, impl="cpp"), ref)
        case.run["eager"] = lambda: histogram_update(
            values_np, edges_np, impl="reference", check_edges=False
        )
        case.run["cpp"] = lambda: histogram_update(
            values_np, edges_np, impl="cpp", check_edges=False
        )
        case.default = "cpp"
    return [case]


def _timed(timer: Timer, case: Case, rounds: int, notes: list[str]) -> dict[str, float] | None:
    """``timer.compare`` of the case; an implementation that raises is left out with a note."""
    try:
        return timer.compare(case.run, rounds)
    except Exception:
        runs = {}
        for impl, fn in case.run.items():
            try:
                fn()
                runs[impl] = fn
            except Exception as exc:
                notes.append(f"{case.op} {impl} failed at {case.shape}: {type(exc).__name__}"[:200])
        if "eager" not in runs:
            return None
        return timer.compare(runs, rounds)


def print_summary(rows: list[Row]) -> None:
    """One line per op/shape/pass: eager, compile, conveyor's fastest, ratios, roofline."""
    print("## summary (ms; best = fastest conveyor implementation)")
    print(
        f"{'op':<14} {'shape':<34} {'pass':<8} {'eager':>9} {'compile':>9} {'best':>12} "
        f"{'vs eager':>8} {'vs compile':>10} {'%copy':>6} {'%mm':>5}"
    )
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.op, r.shape, r.pass_), []).append(r)
    for (op, shape, pass_), rs in groups.items():
        by = {r.impl: r for r in rs}
        ours = [r for r in rs if r.impl not in ("eager", "compile")]
        if not ours:
            continue
        best = min(ours, key=lambda r: r.ms)
        comp = by.get("compile")
        vs_compile = f"{comp.ms / best.ms:>9.2f}x" if comp else f"{'-':>10}"
        print(
            f"{op:<14} {shape:<34} {pass_:<8} {by['eager'].ms:>9.3f} "
            f"{(f'{comp.ms:.3f}' if comp else '-'):>9} {f'{best.impl} {best.ms:.3f}':>12} "
            f"{by['eager'].ms / best.ms:>7.2f}x {vs_compile} {best.frac_copy:>6.0%} "
            f"{best.frac_matmul:>5.0%}"
        )


def mlp_cases(device, dtype, note, compile_ref) -> Iterator[Case]:
    (
        """Whole-MLP inference (serving): FusedMLP (weights packed once) vs nn.Sequential.

    Like every builder, a generator: cases (and their torch.compile warm-ups)
    are built one at a time, so --max-seconds can stop between them.
    """
        ""
    )
    from torch import nn

    from conveyor.kernels import FusedMLP

    cases: list[Case] = []
    es = torch.finfo(dtype).bits // 8

    modules = {"relu": nn.ReLU, "gelu": nn.GELU}

    def build(dims: list[int], batch: int, act: str = "relu") -> None:
        acts = [act] * (len(dims) - 2) + ["none"]
        fused = FusedMLP(dims, acts).to(device=device, dtype=dtype)
        mods: list[nn.Module] = []
        for layer in fused.layers:
            lin = nn.Linear(layer.in_features, layer.out_features).to(device=device, dtype=dtype)
            lin.load_state_dict(layer.state_dict())
            mods += [lin] + ([modules[act]()] if layer.activation == act else [])
        seq = nn.Sequential(*mods)
        x = torch.randn(batch, dims[0], device=device, dtype=dtype)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), seq(x), rtol=1e-4, atol=1e-4)
        weights = sum(k * n for k, n in itertools.pairwise(dims))
        case = Case(
            "mlp", f"{'-'.join(map(str, dims))}{'' if act == 'relu' else ' ' + act} batch {batch}",
            str(dtype)[6:], "infer",
            es * (weights + batch * (dims[0] + dims[-1])), 2.0 * batch * weights,
        )  # fmt: skip
        case.default = dispatch.choose("mlp", device, dtype, work=batch * weights)

        def no_grad(fn):
            def run():
                with torch.no_grad():
                    return fn(x)

            return run

        case.run["eager"] = no_grad(seq)
        if compile_ref:
            c = _compiled(no_grad(torch.compile(seq, dynamic=False)), note)
            if c:
                case.run["compile"] = c
        if dispatch.available("mlp", "cpp", device, dtype):
            case.run["cpp"] = no_grad(fused)
        cases.append(case)

    # The serving benchmark's model (64-256-256-1) at the batch sizes the server forms.
    shapes = [([64, 128, 64, 1], (1, 32, 256)), ([64, 256, 256, 1], (1, 8, 64, 512))]
    shapes.append(([256, 512, 256, 1], (1, 32, 256)))
    # GELU hidden layers: the activation is most of the epilogue's cost.
    shapes.append(([64, 256, 256, 1], (64, 512), "gelu"))
    for dims, batches, *act in shapes:
        for batch in batches:
            build(dims, batch, *act)
            yield from cases
            cases.clear()


BUILDERS = {
    "linear": linear_cases,
    "embedding_bag": embedding_bag_cases,
    "layer_norm": layer_norm_cases,
    "histogram": histogram_cases,
    "mlp": mlp_cases,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument(
        "--ops",
        default=",".join(BUILDERS),
        help=f"comma-separated subset of {','.join(BUILDERS)} (default: all)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (torch and conveyor; default 1)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="timed batches per implementation, the fastest kept (default 5)",
    )
    parser.add_argument(
        "--min-time", type=float, default=0.05, help="seconds per timed batch (default 0.05)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="stop starting new cases after this long; the summary still prints (0: no limit)",
    )
    parser.add_argument(
        "--large-only", action="store_true", help="on CUDA, only the large (GPU-sized) shapes"
    )
    parser.add_argument(
        "--embedding-bag-shapes",
        metavar="V,D,B,L;...",
        default="",
        help="embedding_bag shapes instead of the defaults (table rows V, width D, B bags of L)",
    )
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    unknown = [op for op in args.ops.split(",") if op not in BUILDERS]
    if unknown:
        parser.error(
            f"--ops: unknown op(s) {','.join(map(repr, unknown))}; choose from {','.join(BUILDERS)}"
        )
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if not (math.isfinite(args.min_time) and args.min_time > 0):
        parser.error(f"--min-time must be a finite number > 0, got {args.min_time:g}")
    if not (math.isfinite(args.max_seconds) and args.max_seconds >= 0):
        parser.error(
            f"--max-seconds must be a finite number >= 0 (0: no limit), got {args.max_seconds:g}"
        )
    global LARGE_ONLY
    LARGE_ONLY = args.large_only
    for spec in filter(None, args.embedding_bag_shapes.split(";")):
        try:
            V, D, B, L = (int(x) for x in spec.split(","))
        except ValueError:
            parser.error(f"--embedding-bag-shapes: expected V,D,B,L integers, got {spec!r}")
        EMBEDDING_BAG_SHAPES.append((V, D, B, L))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    _C.set_num_threads(args.threads)
    torch.manual_seed(0)
    _raise_recompile_limit()
    dtype = getattr(torch, args.dtype)
    timer = Timer(args.device, args.min_time)
    ceil = ceilings(args.device, timer)
    peak = ceil.get(f"matmul_{args.dtype}_gflops", ceil["matmul_float32_gflops"])
    name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.machine()} {os.cpu_count()} cores"
    )
    notes: list[str] = []
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {name}, torch {torch.__version__}, "
        f"threads {args.threads}, {args.dtype}"
    )
    print(
        f"# ceilings: copy {ceil['copy_gbs']:.1f} GB/s (read+write), "
        + ", ".join(f"{k[:-7]} {v:.0f} GFLOP/s" for k, v in ceil.items() if k.startswith("matmul"))
    )
    header = (
        f"{'op':<14} {'shape':<34} {'pass':<8} {'impl':<8} {'ms':>9} {'GB/s':>8} "
        f"{'GFLOP/s':>9} {'%copy':>6} {'%mm':>5} {'vs eager':>8}"
    )
    print(header)
    rows: list[Row] = []
    started = time.perf_counter()

    def out_of_time() -> bool:
        late = args.max_seconds > 0 and time.perf_counter() - started > args.max_seconds
        if late:
            notes.append(f"stopped early: --max-seconds {args.max_seconds:g} reached")
        return late

    for op in args.ops.split(","):
        if out_of_time():
            break
        try:  # histogram_cases builds its one case here; the others are generators
            cases = iter(BUILDERS[op](args.device, dtype, notes, not args.no_compile))
        except Exception as exc:
            notes.append(f"{op}: could not build cases: {type(exc).__name__}: {exc}"[:200])
            continue
        while not out_of_time():
            try:
                case = next(cases)
            except StopIteration:
                break
            except Exception as exc:  # a builder that fails (out of memory, ...) ends its op
                notes.append(f"{op}: stopped building cases: {type(exc).__name__}: {exc}"[:200])
                break
            times = _timed(timer, case, args.rounds, notes)
            if times is None:
                continue
            for impl, t in times.items():
                gbs, gfl = case.bytes / t / 1e9, case.flops / t / 1e9
                row = Row(
                    case.op, case.shape, case.dtype, case.pass_, impl, t * 1e3, gbs, gfl,
                    gbs / ceil["copy_gbs"], gfl / peak, times["eager"] / t,
                    impl == ("eager" if case.default == "reference" else case.default),
                )  # fmt: skip
                rows.append(row)
                mark = "*" if row.default else " "
                print(
                    f"{op:<14} {case.shape:<34} {case.pass_:<8} {impl + mark:<8} {row.ms:>9.3f} "
                    f"{gbs:>8.1f} {gfl:>9.1f} {row.frac_copy:>6.0%} {row.frac_matmul:>5.0%} "
                    f"{row.speedup_vs_eager:>7.2f}x",
                    flush=True,
                )
    again = ceilings(args.device, timer)
    print(
        "# ceilings again at the end: "
        + ", ".join(f"{k} {v:.1f}" for k, v in again.items())
        + " (fractions above use the start's; the JSON keeps both)"
    )
    print("# * = the dispatcher's default for this device/dtype/shape; vs eager = eager_ms / ms")
    print_summary(rows)
    for n in sorted(set(notes)):
        print(f"# note: {n}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "device": name,
                    "torch": torch.__version__,
                    "threads": args.threads,
                    "ceilings": ceil,
                    "ceilings_at_end": again,
                    "notes": sorted(set(notes)),
                    "rows": [asdict(r) for r in rows],
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
