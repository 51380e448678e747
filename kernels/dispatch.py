"""Which implementation of a fused op runs: one small set of rules for every op.

Implementations (``IMPLS``):

- ``reference``: plain torch (or numpy for the histogram); always available, the
  definition every other implementation is tested against.
- ``cpp``: C++/OpenMP in ``conveyor._C``; CPU tensors of float32 or float64.
- ``triton``: Triton kernels in ``conveyor.kernels.triton_kernels``; CUDA tensors
  (float32, float16, bfloat16) when ``triton`` is importable, and CPU tensors only
  under Triton's interpreter (``TRITON_INTERPRET=1``, tests only: it is slow).
- ``cuda``: CUDA kernels in ``conveyor._C`` (built with CUDA); CUDA tensors of
  float32, float16, bfloat16.
- ``cublaslt`` (linear only): cuBLASLt's GEMM through torch, with the bias and
  ReLU (or tanh-GELU without a gradient) in its epilogue, and a backward whose
  activation and bias gradients come from one CUDA pass in ``conveyor._C``;
  CUDA tensors of float32, float16, bfloat16 (``conveyor.kernels.linear``).

Choice, first match wins:

0. under ``torch.jit.trace``, ``reference`` always (the trace records torch ops,
   not what the compiled implementations write through raw pointers);
1. the ``impl=`` argument of the op (strict: an implementation that cannot run
   on the tensor raises ``ValueError``);
2. ``CONVEYOR_<OP>_IMPL`` (e.g. ``CONVEYOR_LINEAR_IMPL=cpp``), then
   ``CONVEYOR_KERNEL_IMPL`` for every op; an unknown name raises, a known one
   that cannot run on this tensor falls through to the defaults;
3. the defaults below, by device, dtype and (on CPU) problem size;
4. ``reference``.

CPU defaults were decided by measurement (``benchmarks/kernels/bench_ops.py``,
see ``benchmarks/README.md`` and ``_CPU_RULES``): the C++ path is the default only
where it was at least as fast as torch's own CPU op in the same run; elsewhere
torch (``reference``) is: small linear and layer-norm calls, and the
embedding-bag sum forward when no gradient is needed. CUDA defaults were measured
on an H200 (``_CUDA_RULES``): our kernels where they beat torch's op, torch
elsewhere (small calls, where launch cost decides, and the GEMM except float32
without TF32, where 3xTF32 beats the IEEE SGEMM), except that a ReLU layer runs
cuBLASLt with the ReLU in its epilogue: the same GEMM as torch's, without the
second pass over the output.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable

import torch

IMPLS = ("reference", "cpp", "triton", "cuda", "cublaslt")
OPS = ("linear", "embedding_bag", "layer_norm", "histogram", "mlp")
# Implementations that exist per op (the whole-MLP call has no GPU kernel yet;
# cuBLASLt's epilogues serve the GEMM only).
_OP_IMPLS = {op: IMPLS[:4] for op in OPS} | {"linear": IMPLS, "mlp": ("reference", "cpp")}
ENV_ALL = "CONVEYOR_KERNEL_IMPL"

_CPP_DTYPES = (torch.float32, torch.float64)
_GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def env_var(op: str) -> str:
    """Per-op override variable, e.g. ``CONVEYOR_LAYER_NORM_IMPL``."""
    return f"CONVEYOR_{op.upper()}_IMPL"


@functools.cache
def triton_installed() -> bool:
    """Whether ``import triton`` would succeed (Triton is optional at run time)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _compiled() -> object | None:
    try:
        from conveyor import _C
    except ImportError:  # a source tree without the built extension: references only
        return None
    return _C


def set_cpu_threads(n: int) -> None:
    """Threads for conveyor's C++ CPU ops, in every thread of the process (OpenMP's own
    setting is per calling thread); what ``torch.set_num_threads`` is for torch's ops.
    Default: ``OMP_NUM_THREADS``, else all cores. No-op without the compiled extension."""
    compiled = _compiled()
    if compiled is not None:
        compiled.set_num_threads(n)


def has_compiled(name: str) -> bool:
    """Whether ``conveyor._C`` was built with the function ``name``."""
    return hasattr(_compiled(), name)


def _cpp_name(op: str) -> str:
    return "histogram_update" if op == "histogram" else f"{op}_forward"


def available(op: str, impl: str, device: str, dtype: torch.dtype) -> bool:
    """Whether ``impl`` of ``op`` can run on tensors of ``device`` type and ``dtype``."""
    if impl == "reference":
        return True
    if impl not in _OP_IMPLS.get(op, ()):
        return False
    if impl == "cpp":
        return device == "cpu" and dtype in _CPP_DTYPES and has_compiled(_cpp_name(op))
    gpu_dtypes = (torch.float32,) if op == "histogram" else _GPU_DTYPES
    if impl == "triton":
        runs_here = device == "cuda" or (device == "cpu" and triton_interpreted())
        return runs_here and dtype in gpu_dtypes and triton_installed()
    if impl == "cuda":
        return device == "cuda" and dtype in gpu_dtypes and has_compiled(_cpp_name(op) + "_cuda")
    return device == "cuda" and dtype in gpu_dtypes  # cublaslt: torch's own CUDA build


# CPU default per op, from the measurements in benchmarks/README.md (2 shared
# cores, AMD EPYC with AVX-512, torch 2.13 CPU, one thread, interleaved
# timings). `work` is the op's size (linear: M*N*K multiply-adds; layer norm:
# elements; embedding bag: gathered elements); `grad` whether a backward
# follows (training) or not (inference).
#
# - linear: conveyor's GEMM beats torch's BLAS 1.2-2.3x from 64x256x256
#   (2^22 MACs) up, except with fewer than 24 outputs (0.6-0.8x) and when
#   training on a single row (0.3x). Below 2^22, with AVX-512, the small-batch
#   forward's 4 x 4 dot tiles (2026-11-28) beat it from 2^19-2^20 when K >= 128
#   (see _linear_on_cpu); with K = 64, one row, or without AVX-512, torch's
#   lower call overhead and its small-matrix kernels win (0.4-0.95x).
# - layer_norm: 1.1-1.75x from 2^19 elements up. Inference from 2^17 since
#   the pointer binding (2026-11-27 20:38, load average 1.1-1.6): forward
#   1.06-1.78x at 2^17-2^18 on rows of 256-4096; at 2^16 0.92-1.18x. Training
#   stays from 2^19: forward + backward was 0.81-1.12x at 2^17-2^18.
# - embedding_bag: training: cpp (torch's dense backward is slow; fwd+bwd
#   1.1-5.8x). Inference with mode "mean": cpp at every size (the rule gets
#   the mode as `detail`): 1.2-1.9x torch from 4 bags of 2 indices to 4096
#   bags of 40 (2026-11-27 23:20-23:25); torch's mean costs ~10 us even on 8
#   indices. Inference with "sum" (and per-sample weights): torch. The kernel
#   alone beats FBGEMM's on 10^5-10^6-row tables (1.02-1.28x) and at D=16,
#   but not at D=64-128 with the table in cache (0.97x at worst), and the
#   call costs more than torch's on small bags (4.9 us in all on 8 indices,
#   ~2.1 us of it the Python wrapper and 1 us the output allocation, against
#   torch's whole call, 2.6 us; 2026-11-28), which puts sum at 0.37-0.74x
#   below 2^18 gathered elements and 0.91-0.99x at 2^18-2^21.
# - histogram: C++ is ~56x numpy on 2 threads; torch has no equivalent op.
# - mlp (whole-MLP inference in one call, weights packed once by FusedMLP):
#   1.2-2.2x nn.Sequential eager at batch 1-512 (1.0-1.6x when the call still
#   packed the weights), so always for inference; training runs layer by layer.
#   A FusedLinear module's own CPU inference also uses its packed weights unless
#   an implementation is forced (kernels/linear.py).


@functools.cache
def _cpu_wide_vectors() -> bool:
    compiled = _compiled()
    return bool(compiled is not None and compiled.cpu_wide_vectors())


def _gemm_path(m: int, n: int, k: int) -> bool:
    """Whether the C++ forward of an m x k by k x n product runs the packed GEMM (not
    the dot-product tiles): asked of conveyor._C, so the rule cannot drift."""
    compiled = _compiled()
    return compiled is None or not compiled.linear_uses_dot_products(m, n, k)


def _linear_on_cpu(work: int, grad: bool, detail: tuple) -> str:
    """The CPU linear rule, from one-thread measurements (benchmarks/README.md,
    "linear, small batches"). Without the layer's shape: C++ from 2^22 multiply-adds.
    With it (``(M, N, K, activation)``):

    - torch when the packed GEMM would run with fewer than 24 outputs (its 32-column
      panels are mostly padding: 0.6-0.8x), and for training with fewer than 8
      outputs (one output: 0.5x) or a single row (dx and dW of one row: 0.3-0.5x);
    - C++ from 2^22; with AVX-512 (the small-batch forward's 4 x 4 dot tiles) also
      from 2^21 for training and, with 2 rows or more, from 2^20 for inference
      (2^19 when K >= 256), always with K >= 128: 1.03-2.5x there.
    """
    if not detail:
        return "cpp" if work >= 1 << 22 else "reference"
    m, n, k, _ = detail
    if grad and (m < 2 or n < 8):
        return "reference"
    if n < 24 and _gemm_path(m, n, k):
        return "reference"
    if work >= 1 << 22:
        return "cpp"
    if not _cpu_wide_vectors() or k < 128 or m < 2:
        return "reference"
    if grad:
        return "cpp" if work >= 1 << 21 else "reference"
    return "cpp" if work >= 1 << 20 or (k >= 256 and work >= 1 << 19) else "reference"


_CPU_RULES: dict[str, Callable[[int, bool, tuple], str]] = {
    "linear": _linear_on_cpu,
    "embedding_bag": lambda work, grad, detail: (
        "cpp" if grad or (detail and detail[0] == "mean") else "reference"
    ),
    "layer_norm": lambda work, grad, detail: (
        "cpp" if work >= (1 << 19 if grad else 1 << 17) else "reference"
    ),
    "histogram": lambda work, grad, detail: "cpp",
    "mlp": lambda work, grad, detail: "cpp" if not grad else "reference",
}


# CUDA defaults, from benchmarks/kernels/bench_ops.py on an H200 (torch 2.11,
# cu130; benchmarks/gpu-results/2026-11-27-h200/), float32 and bfloat16 alike
# unless stated.
# Below a few million elements every op is bound by the Python-side launch
# (torch's own op returns in ~11 us, ours in ~20-30 us), so torch keeps those.
#
# - linear: torch (cuBLAS), except
#   - float32 without TF32 from 2^32 multiply-adds: Triton's GEMM with 3xTF32
#     tensor-core products is 1.5x torch's IEEE SGEMM forward and 1.4x with
#     the backward at 8192x4096x4096, and 1.5-1.9x forward at the trainer's
#     layers on a large batch (262144 x 64/256 -> 256), 1.26x with the
#     backward at 256 -> 256 (training through a side under 128: not Triton);
#   - otherwise, for inference from 2^22 outputs, a ReLU layer (and tanh-GELU)
#     runs cuBLASLt with the activation in its epilogue (`cublaslt`): eager's
#     own GEMM and bias epilogue without eager's second pass over the output.
#     Run 10 (2026-11-28) in bfloat16: 1.05-1.08x eager and 1.08x
#     torch.compile at 8192x4096->4096, 1.68-1.71x eager and 1.98x compile at
#     262144 x 256 -> 256, 2.05x eager at 262144 x 64 -> 256; float32 at
#     2048x1024->1024 (2^21 outputs) 1.02x; at 2^18 outputs and below
#     0.71-0.87x (host-bound: our Python path costs a few microseconds more
#     than eager's, about what the saved pass takes on 2^22 16-bit outputs).
#     Training: float32 from 2^23 outputs (1.07x eager at 262144 x 64 -> 256,
#     IEEE float32; 1.11-1.27x with the CUDA act_grad, run 14), 16-bit from
#     2^25. The backward's activation and bias gradients come from one CUDA
#     pass (csrc/cuda/act_grad.cu) where eager runs threshold_backward and a
#     column sum that alone took 0.13 ms of a 0.47 ms step. Run 14 (2026-11-28,
#     back to back): bfloat16 1.43x eager at 262144 x 256 -> 256, 1.47x at 64
#     -> 256, 1.13x at 65536 x 1024 -> 1024, 1.00x at 8192x4096->4096 (2^25
#     outputs, GEMM-bound); float16 1.16x, 1.40x, 1.15x, 1.07x. Below 2^25
#     16-bit outputs a step is a few tenths of a millisecond of GPU time and
#     unmeasured here, so torch keeps it. GELU (erf) and SiLU have no epilogue
#     there; our Triton one was 0.71-1.0x eager, and at the square GEMM cuBLAS
#     keeps its lead (Triton 0.77-0.97x eager).
# - embedding_bag: forward from 2^23 gathered elements: CUDA (2-3.7x torch; at
#   4M x 128, 101% of the copy bandwidth in float32 and 98% in bfloat16, the
#   16-byte packed loads); training: CUDA below 2^26 (1.2-1.9x, torch's
#   backward is slow) and Triton above (1.4-1.8x, its backward scales where
#   CUDA's atomics do not).
# - layer_norm: forward from 2^25 elements: Triton (1.5-2.0x, 84-96% of copy
#   bandwidth); training: torch (our backward was 0.9-1.3x of torch's).
# - histogram: CUDA (0.90-1.0 ms for 16M x 32 values with its lookup table;
#   Triton's kernel took 7.1 ms).
#
# `detail` is what a rule needs beyond size: linear passes (M, N, K, activation),
# layer norm (N,), the row width: Triton's kernel holds a row in one program, up to
# TRITON_LAYER_NORM_MAX_N elements (its MAX_N; kept here so that choosing needs no
# `import triton`), and wider rows go to the CUDA kernel.
TRITON_LAYER_NORM_MAX_N = 65536


def _linear_on_cuda(work: int, grad: bool, dtype: torch.dtype, detail: tuple) -> tuple[str, ...]:
    m, n, k, activation = detail or (0, 1 << 30, 1 << 30, "")
    ieee_float32 = dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    # Training through a layer with a side under 128 (64 -> 256) was 0.62x on
    # Triton before the backward moved to cuBLAS and is not measured since.
    if ieee_float32 and work >= 1 << 32 and not (grad and min(n, k) < 128):
        return ("triton",)
    # What cuBLASLt's epilogue can take (see kernels/linear.py, _cublaslt_forward).
    fuses = activation == "relu" or (activation == "gelu_tanh" and not grad)
    least = (1 << 22) if not grad else (1 << 23) if dtype == torch.float32 else (1 << 25)
    if fuses and m * n >= least:
        return ("cublaslt",)
    return ()


_CUDA_RULES: dict[str, Callable[[int, bool, torch.dtype, tuple], tuple[str, ...]]] = {
    "linear": _linear_on_cuda,
    "embedding_bag": lambda work, grad, dtype, detail: (
        (("triton", "cuda") if work >= 1 << 26 else ("cuda", "triton"))
        if grad
        else (("cuda", "triton") if work >= 1 << 23 else ())
    ),
    "layer_norm": lambda work, grad, dtype, detail: (
        ()
        if grad or work < 1 << 25
        else ("triton", "cuda")
        if (detail or (0,))[0] <= TRITON_LAYER_NORM_MAX_N
        else ("cuda",)
    ),
    "histogram": lambda work, grad, dtype, detail: ("cuda", "triton"),
    "mlp": lambda work, grad, dtype, detail: (),
}


def _check_name(impl: str, source: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r} (from {source})")


@functools.cache
def _env_keys(op: str) -> tuple[tuple[str, object], ...]:
    """The override variables of ``op``, each with its key in ``os.environ``'s own
    mapping (bytes on POSIX: ``os.environ`` encodes every key it is given)."""
    encode = getattr(os.environ, "encodekey", lambda key: key)
    return tuple((var, encode(var)) for var in (env_var(op), ENV_ALL))


def forced_by_env(op: str) -> tuple[str, str] | None:
    """``(variable, implementation)`` when ``CONVEYOR_<OP>_IMPL`` or, unset,
    ``CONVEYOR_KERNEL_IMPL`` names one for ``op``; None when neither is set.

    Read on every call, so a variable set at run time takes effect at once. Every
    dispatched op calls this: ``os.environ.get`` of an unset variable costs ~0.6 us
    (it encodes the key, then raises and catches KeyError), so the membership test
    goes to the encoded mapping, ~0.03 us; ``os.environ`` keeps that mapping in step
    with every assignment and deletion.
    """
    data = getattr(os.environ, "_data", None)
    for var, key in _env_keys(op):
        if data is not None and key not in data:
            continue
        name = os.environ.get(var)
        if name:
            return var, name
    return None


def choose(
    op: str,
    device: str,
    dtype: torch.dtype,
    impl: str | None = None,
    *,
    work: int = 0,
    grad: bool = False,
    detail: tuple = (),
) -> str:
    """Name of the implementation of ``op`` to run for tensors of ``device``/``dtype``.

    Args:
        op: one of ``OPS``.
        device: ``torch.device.type`` of the op's main input (``"cpu"``, ``"cuda"``).
        dtype: its dtype.
        impl: forced implementation, or ``None`` for the environment/defaults.
        work: problem size used by size-dependent CPU rules (see ``_CPU_RULES``).
        grad: whether a backward will follow (some CPU rules differ for training).
        detail: op-specific facts a rule reads beyond the size (linear: ``(M, N, K,
            activation)``; embedding bag: ``(mode, D)``; layer norm: ``(N,)``).
    """
    if op not in OPS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    if torch.jit.is_tracing():
        # The compiled implementations write through raw pointers, which a trace does
        # not see: it would record only the output's allocation and replay garbage.
        # The reference is the same math in ops the trace records.
        return "reference"
    if impl is not None:
        _check_name(impl, "the impl argument")
        if not available(op, impl, device, dtype):
            raise ValueError(f"{op}: impl {impl!r} cannot run on {device} tensors of {dtype}")
        return impl
    env = forced_by_env(op)
    if env is not None:
        var, forced = env
        _check_name(forced, var)
        if available(op, forced, device, dtype):
            return forced
        # cannot run here: the defaults decide
    if device == "cuda":
        for candidate in _CUDA_RULES[op](work, grad, dtype, detail):
            if available(op, candidate, device, dtype):
                return candidate
    elif device == "cpu":
        candidate = _CPU_RULES[op](work, grad, detail)
        if available(op, candidate, device, dtype):
            return candidate
    return "reference"


def cuda_dtype_code(dtype: torch.dtype) -> int:
    """dtype code of the CUDA ops in ``conveyor._C`` (see csrc/ops.h)."""
    return {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype]


def cuda_stream(t: torch.Tensor) -> int:
    """The current CUDA stream of ``t``'s device, as the integer the CUDA ops take."""
    return torch.cuda.current_stream(t.device).cuda_stream


def device_type(t: torch.Tensor) -> str:
    """``t.device.type`` ("cpu", "cuda"), for ``choose``: ``Tensor.device`` builds a
    ``torch.device`` on every access (~0.25 us), ``is_cpu`` does not (~0.05 us)."""
    return "cpu" if t.is_cpu else t.device.type


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record an op on ``tensors`` (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def ptr(t: torch.Tensor | None) -> int:
    """Device pointer of ``t``, 0 for ``None`` (the CUDA ops' absent argument)."""
    return 0 if t is None else t.data_ptr()
