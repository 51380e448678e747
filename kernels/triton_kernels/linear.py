"""Fused linear + bias + activation in Triton (contract: ``conveyor.kernels.linear``).

One strided GEMM kernel ``C = act(A @ B + bias)`` with ``tl.dot`` (tensor cores
on GPU, float32 accumulation) and the bias/activation epilogue fused; it also
stores the pre-activation when the backward needs it. The backward runs one
elementwise kernel ``g = dy * act'(z)`` that also sums ``g``'s columns for the
bias gradient (``act_grad``), and two GEMMs with strides (``dx = g @ W``,
``dW = g.T @ x``), which have nothing left to fuse: on a GPU they run on this
GEMM only where it beat torch's (``_backward_matmul``).
float32 inputs keep float32 accuracy unless torch allows TF32 for matmuls
(``torch.backends.cuda.matmul.allow_tf32``), to match ``nn.Linear``: on a GPU
through three TF32 tensor-core products per term ("3xTF32"), in the
interpreter in IEEE float32.

The largest GEMMs (from 2^32 multiply-adds, except 16-bit ones with a side of
256 or less) on a Hopper or later GPU move their tiles with the tensor memory
accelerator (``_matmul_tma_kernel``) when every operand has a unit stride and
16-byte aligned rows; ``CONVEYOR_TRITON_TMA=0`` keeps them on the pointer
kernel, for comparing the two.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from conveyor.kernels.triton_kernels import activation


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of this program, in grouped order: GROUP_M row
    tiles walk the column tiles together, so the B tiles they share are still
    in L2 when the next row tile needs them."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_rows, (pid % per_group) // group_rows


@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, z_ptr,
    M, N, K,
    s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
    M_CLASS,  # the autotuner's key for M (a power of two): unused in the body
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_Z: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = _tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # 64-bit rows and columns: an operand or output of 2^31 elements or more
    # (8 GB of float32 activations) would overflow 32-bit offsets.
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # The operands' tiles as 64-bit pointers, stepped along K each iteration.
    a_ptrs = a_ptr + rm[:, None] * s_am + rk[None, :].to(tl.int64) * s_ak
    b_ptrs = b_ptr + rk[:, None].to(tl.int64) * s_bk + rn[None, :] * s_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_ptrs, mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * s_ak
        b_ptrs += BLOCK_K * s_bk
    # Epilogue, while the tile is in registers: bias, pre-activation, activation.
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offs = rm[:, None] * s_cm + rn[None, :] * s_cn
    if STORE_Z:
        tl.store(z_ptr + offs, acc.to(z_ptr.dtype.element_ty), mask=mask)
    out = activation.apply(acc, ACT)
    tl.store(c_ptr + offs, out.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _matmul_tma_kernel(
    a_desc, b_desc, c_desc, z_desc, bias_ptr,
    M, N, K,
    M_CLASS,  # the autotuner's key for M (a power of two): unused in the body
    A_KM: tl.constexpr, B_NK: tl.constexpr, OUT_DTYPE: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_Z: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):  # fmt: skip
    # The same GEMM as _matmul_kernel, with every tile moved by the Hopper
    # tensor memory accelerator: one descriptor per operand instead of a block
    # of pointers, so the loads are asynchronous bulk copies the pipeline can
    # run ahead, and the edges are padded with zeros (loads) or clipped (stores)
    # by the hardware instead of masks. Operands are described in their storage
    # layout: A_KM when ``a`` is stored [K, M] (a transposed view), B_NK when
    # ``b`` is stored [N, K] (the forward's weight); the tile is transposed in
    # registers.
    pid_m, pid_n = _tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if A_KM:  # noqa: SIM108 (constexpr branches: only one is compiled)
            a = a_desc.load([k0, off_m]).T
        else:
            a = a_desc.load([off_m, k0])
        if B_NK:  # noqa: SIM108
            b = b_desc.load([off_n, k0]).T
        else:
            b = b_desc.load([k0, off_n])
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        rn = off_n + tl.arange(0, BLOCK_N)
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if STORE_Z:
        z_desc.store([off_m, off_n], acc.to(OUT_DTYPE))
    c_desc.store([off_m, off_n], activation.apply(acc, ACT).to(OUT_DTYPE))


@triton.jit
def _act_grad_kernel(gy_ptr, z_ptr, g_ptr, total, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = activation.grad_times(gy, z, ACT)
    tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _act_grad_bias_kernel(
    gy_ptr, z_ptr, g_ptr, part_ptr, M, N,
    ACT: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """``g = dy * act'(z)`` over ROWS rows and BLOCK_N columns, and those rows'
    column sums of ``g`` (as stored: the bias gradient sums what dx and dW use)
    into row ``program_id(0)`` of the float32 partials ``[cdiv(M, ROWS), N]``."""
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(0, ROWS, BLOCK_M):
        rows = pid_m.to(tl.int64) * ROWS + start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < M) & col_ok[None, :]
        offs = rows[:, None] * N + cols[None, :]
        gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = activation.grad_times(gy, z, ACT).to(g_ptr.dtype.element_ty)
        tl.store(g_ptr + offs, g, mask=mask)
        acc += tl.sum(tl.where(mask, g.to(tl.float32), 0.0), axis=0)
    tl.store(part_ptr + pid_m.to(tl.int64) * N + cols, acc, mask=col_ok)


_MAX_GRID_Y = 65535  # CUDA's gridDim.y


def act_grad(gy: torch.Tensor, z: torch.Tensor, act: int, bias_grad: bool):
    """``(g, db)``: ``g = dy * act'(z)`` (``gy``'s dtype, contiguous ``[M, N]``) and,
    when ``bias_grad``, ``db = g.sum(0)`` in ``gy``'s dtype, summed in float32 (else
    None). With the bias gradient both come from one pass over ``dy`` and ``z``:
    torch's column sum of a tall ``[M, N]`` 16-bit gradient ran at about a quarter
    of the copy bandwidth on an H200 (0.13 ms of the 0.47 ms of GPU time in a
    training step of a 262144 x 256 -> 256 layer), more than the activation
    gradient's pass (0.09 ms); the two in this kernel took 0.13-0.16 ms against
    0.22-0.23 (benchmarks/gpu-results/2026-11-28-h200, runs 11 and 12)."""
    M, N = gy.shape
    g = torch.empty_like(gy)
    if gy.numel() == 0:
        return g, (torch.zeros(N, dtype=gy.dtype, device=gy.device) if bias_grad else None)
    block_n = min(128, triton.next_power_of_2(N)) if gy.is_cuda else 16
    if not bias_grad or triton.cdiv(N, block_n) > _MAX_GRID_Y:
        # (Column blocks go on the grid's second axis, which CUDA caps at 65535: a
        # layer wider than 8,388,480 outputs sums its bias gradient with torch.)
        block = 1024 if gy.is_cuda else 64
        _act_grad_kernel[(triton.cdiv(M * N, block),)](gy, z, g, M * N, ACT=act, BLOCK=block)
        if not bias_grad:
            return g, None
        return g, g.sum(0, dtype=torch.float32).to(gy.dtype)
    if gy.is_cuda:
        block_m = max(8, 4096 // block_n)
        # Rows per program: about 8 programs per SM for the whole gradient, so the
        # partials stay a few hundred rows whatever M is.
        programs = 8 * _sm_count(gy.device.index or 0)
        per = triton.cdiv(M * triton.cdiv(N, block_n), programs)
        rows = min(max(block_m, triton.next_power_of_2(per)), 1 << 14)
    else:  # the interpreter: few, small programs
        block_m = 8
        rows = 2 * block_m
    part = torch.empty((triton.cdiv(M, rows), N), dtype=torch.float32, device=gy.device)
    grid = (triton.cdiv(M, rows), triton.cdiv(N, block_n))
    _act_grad_bias_kernel[grid](
        gy, z, g, part, M, N, ACT=act, ROWS=rows, BLOCK_M=block_m, BLOCK_N=block_n
    )
    return g, part.sum(0).to(gy.dtype)


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32:
        return "tf32"  # (16-bit inputs ignore it)
    # float32 without TF32: on a GPU three TF32 tensor-core products per term
    # (the "3xTF32" split: a = hi + lo, a*b ~ hi*hi + hi*lo + lo*hi) keep
    # about float32's accuracy, the dropped lo*lo being ~2^-22 of the product,
    # at several times the speed of scalar float32 FMAs.
    return "tf32x3" if device.type == "cuda" else "ieee"


def _blocks(M: int, N: int, K: int, device: torch.device) -> tuple[int, int, int]:
    if device.type != "cuda":  # the interpreter: few, small programs
        return 16, 16, 16
    bm = 64 if M <= 64 else 128
    return bm, 128 if N >= 128 else 64, 32


# Large GEMMs on a GPU pick their tiles by measurement, once per (M class, N,
# K, dtypes): what is fastest differs between cards, dtypes (tf32 tiles take
# twice the shared memory of bf16 ones) and shapes. Configurations that do not
# fit the card's shared memory are skipped by the autotuner. Smaller calls (the
# serving batches, the tests) keep the fixed tiles above: tuning costs a second
# or so per new key, which a small call would never pay back.
_TUNE_WORK = 1 << 24  # M*N*K multiply-adds from which a call is tuned


def _config(bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
    tiles = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}
    return triton.Config(tiles, num_warps=warps, num_stages=stages)


# Candidates by input width: 16-bit inputs take K-tiles of 64 (tensor-core
# friendly), float32 (IEEE or TF32) K-tiles of 32 at twice the bytes per element.
_CONFIGS_16 = [_config(128, 256, 64, 8, 3), _config(128, 256, 64, 8, 4),
               _config(256, 128, 64, 8, 3), _config(128, 128, 64, 8, 3),
               _config(128, 128, 64, 4, 4), _config(64, 128, 64, 4, 4)]  # fmt: skip
_CONFIGS_32 = [_config(128, 128, 32, 8, 3), _config(128, 128, 32, 4, 3),
               _config(64, 128, 32, 4, 4)]  # fmt: skip


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    """The candidates for this call's input width (K-tile 32 marks the float32 ones)."""
    a = named_args["a_ptr"] if "a_ptr" in named_args else named_args["a_desc"].base
    wide = a.element_size() >= 4
    return [c for c in configs if (c.kwargs["BLOCK_K"] == 32) == wide]


def _tma_blocks(nargs: dict) -> None:
    """Give the descriptors the tile shapes of the configuration about to run."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bk, bm] if nargs["A_KM"] else [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk] if nargs["B_NK"] else [bk, bn]
    nargs["c_desc"].block_shape = [bm, bn]
    nargs["z_desc"].block_shape = [bm, bn]


def _with_hook(config: triton.Config) -> triton.Config:
    return triton.Config(
        dict(config.kwargs),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        pre_hook=_tma_blocks,
    )


_tuned_kernel = triton.autotune(
    configs=_CONFIGS_16 + _CONFIGS_32,
    key=["M_CLASS", "N", "K"],
    prune_configs_by={"early_config_prune": _prune},
)(_matmul_kernel)
_tuned_tma_kernel = triton.autotune(
    configs=[_with_hook(c) for c in _CONFIGS_16 + _CONFIGS_32],
    key=["M_CLASS", "N", "K", "A_KM", "B_NK"],
    prune_configs_by={"early_config_prune": _prune},
)(_matmul_tma_kernel)

# From this many multiply-adds the descriptor kernel beat the pointer kernel
# on the H200 (8192x4096x4096: 0.445 against 0.460-0.487 ms in bfloat16).
# Below it, building the descriptors on the host each call (tens of us) cost
# more than TMA saved: 64x4096x4096 took 0.104 ms against 0.072.
_TMA_WORK = 1 << 32
# ... but not for a 16-bit layer this narrow (the trainer's 64 -> 256 -> 256
# on a large batch): its GEMM is short enough that the ~45 us of host work
# per call to build descriptors decides. At 262144 x 256 -> 256 in bfloat16
# the TMA kernel ran 0.107 ms on the GPU against 0.117 for the pointer kernel,
# but cost 0.124 ms of host time against 0.079, so calls back to back took
# 0.126 against 0.118 ms (64 -> 256: 0.105 against 0.079). float32 GEMMs of
# the same shape are long enough to hide it (0.49 against 0.53 ms).
_TMA_NARROW = 256
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
# Set to 0 to keep every GEMM on the pointer kernel (for comparing the two).
_TMA_ENV = "CONVEYOR_TRITON_TMA"


@functools.cache
def _has_tma(device_index: int) -> bool:
    """Whether the GPU has the tensor memory accelerator (Hopper, compute 9.0, or later)."""
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def _storage(t: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
    """``t`` as its storage lays it out (rows contiguous) and whether that is ``t.T``,
    or None when a TMA descriptor cannot address it (no unit stride, 16-byte
    alignment of the base and row stride)."""
    if t.stride(1) == 1:
        view, transposed = t, False
    elif t.stride(0) == 1:
        view, transposed = t.t(), True
    else:
        return None
    if t.data_ptr() % 16 or (view.stride(0) * t.element_size()) % 16:
        return None
    return view, transposed


def _descriptor(view: torch.Tensor, block: list[int]) -> TensorDescriptor:
    return TensorDescriptor(view, list(view.shape), list(view.stride()), block)


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    act: int = 0,
    keep_z: bool = False,
    out_dtype: torch.dtype | None = None,
    tma: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``act(a @ b + bias)`` for 2-D ``a [M, K]``, ``b [K, N]`` of any strides.

    Returns ``(c [M, N], z)``, ``z`` the pre-activation when ``keep_z``.
    ``tma``: use the tensor-memory-accelerator kernel (default: for tuned GEMMs
    on a Hopper or later GPU whose operands it can address; True forces it,
    also in the interpreter, for the tests).
    """
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), dtype=out_dtype or a.dtype, device=a.device)
    z = torch.empty_like(c) if keep_z and act else None
    if M == 0 or N == 0:
        return c, z
    tuned = a.is_cuda and M * N * K >= _TUNE_WORK
    if tuned and a.dtype == torch.float32:
        # TF32 tensor-core instructions take both operands K-major from shared
        # memory (16-bit ones may be transposed): the backward's g.T, x and W
        # as [K, N] are not, and ran at half the forward's rate. A copy into
        # that layout costs one pass over the operand, a few percent of the GEMM.
        if a.stride(1) != 1:
            a = a.contiguous()
        if b.stride(0) != 1:
            b = b.t().contiguous().t()
    flags = dict(
        HAS_BIAS=bias is not None, ACT=act, STORE_Z=z is not None,
        PRECISION=_precision(a.dtype, a.device), GROUP_M=8,
    )  # fmt: skip
    if tma is None:
        tma = (
            tuned
            and M * N * K >= _TMA_WORK
            and (a.element_size() >= 4 or min(N, K) > _TMA_NARROW)
            and os.environ.get(_TMA_ENV, "1") != "0"
            and _has_tma(a.device.index or 0)
        )
    sa = _storage(a) if tma else None
    sb = _storage(b) if sa is not None else None
    if sa is not None and sb is not None and _storage(c) is not None:
        _matmul_tma(a, sa, sb, c, z, bias, tuned, flags)
        return c, z
    args = (
        a, b, c, bias if bias is not None else c, z if z is not None else c,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        triton.next_power_of_2(M),
    )  # fmt: skip
    if tuned:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        _tuned_kernel[grid](*args, **flags)
    else:
        bm, bn, bk = _blocks(M, N, K, a.device)
        grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
        _matmul_kernel[grid](*args, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return c, z


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _fills_gpu(M: int, N: int, K: int, a: torch.Tensor) -> bool:
    """Whether ``a @ b`` has at least one output tile per SM (the kernel has no
    split-K: each program walks the whole K)."""
    bm, bn, _ = _blocks(M, N, K, a.device)
    return triton.cdiv(M, bm) * triton.cdiv(N, bn) >= _sm_count(a.device.index or 0)


def _backward_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for the backward, whose GEMMs have no epilogue to fuse: Triton's
    GEMM only where it was measured faster than torch's (cuBLAS) on the H200,
    i.e. float32 without TF32 (3xTF32 against the IEEE SGEMM) when the product
    fills the GPU and has no output side under 128. 16-bit and TF32 GEMMs,
    narrow outputs, and the weight gradient of a narrow layer over a large
    batch (few output tiles, a long K that cuBLAS splits) go to torch:
    262144 x 256 -> 256 in bfloat16 took 1.30 ms for dW on our kernel against
    0.11 ms for cuBLAS (benchmarks/README.md)."""
    M, K = a.shape
    N = b.shape[1]
    if not a.is_cuda or M == 0 or N == 0:
        return matmul(a, b)[0]
    wide = min(M, N) >= 128  # dx of a 64-wide input: 0.52 ms ours, 0.26 cuBLAS
    if _precision(a.dtype, a.device) == "tf32x3" and wide and _fills_gpu(M, N, K, a):
        return matmul(a, b)[0]
    return a @ b


def _matmul_tma(a, sa, sb, c, z, bias, tuned: bool, flags: dict) -> None:
    """Launch ``_matmul_tma_kernel``; ``sa``/``sb`` are ``_storage`` of ``a`` and ``b``."""
    M, K = a.shape
    N = c.shape[1]
    (a_view, a_km), (b_view, b_kn) = sa, sb
    # b [K, N] stored with unit stride along K is the [N, K] layout (b_kn: b.T).
    layout = dict(A_KM=a_km, B_NK=b_kn, OUT_DTYPE=_TL_DTYPES[c.dtype])
    args = (bias if bias is not None else c, M, N, K, triton.next_power_of_2(M))
    if tuned:
        descs = [_descriptor(t, [1, 1]) for t in (a_view, b_view, c)]
        descs.append(_descriptor(z, [1, 1]) if z is not None else descs[2])
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        _tuned_tma_kernel[grid](*descs, *args, **layout, **flags)
        return
    bm, bn, bk = _blocks(M, N, K, a.device)
    nargs = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **layout)
    nargs["a_desc"], nargs["b_desc"], nargs["c_desc"] = (
        _descriptor(t, [1, 1]) for t in (a_view, b_view, c)
    )
    nargs["z_desc"] = _descriptor(z, [1, 1]) if z is not None else nargs["c_desc"]
    _tma_blocks(nargs)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    descs = [nargs[k] for k in ("a_desc", "b_desc", "c_desc", "z_desc")]
    _matmul_tma_kernel[grid](*descs, *args, **layout, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)


def forward(x, weight, bias, act: int, keep_z: bool):
    """``(y, z)`` for ``x [M, K]``, ``weight [N, K]``; ``weight.T`` is a stride swap."""
    return matmul(x, weight.t(), bias=bias, act=act, keep_z=keep_z)


def backward(gy, z, x, weight, act: int, need):
    """``(dx, dW, db)`` (``None`` where not needed) from ``dy`` and the saved ``z``."""
    if act:
        g, gb = act_grad(gy, z, act, bool(need[2]))
    else:
        g, gb = gy, (gy.sum(0, dtype=torch.float32).to(gy.dtype) if need[2] else None)
    gx = _backward_matmul(g, weight) if need[0] else None
    gw = _backward_matmul(g.t(), x) if need[1] else None
    return gx, gw, gb
