"""Fused linear + bias + activation in Triton (contract: ``conveyor.kernels.linear``).

One strided GEMM kernel ``C = act(A @ B + bias)`` with ``tl.dot`` (tensor cores
on GPU, float32 accumulation) and the bias/activation epilogue fused; it also
stores the pre-activation when the backward needs it. The backward runs one
elementwise kernel ``g = dy * act'(z)`` and the same GEMM twice with strides
(``dx = g @ W``, ``dW = g.T @ x``); ``db = g.sum(0)`` is a torch reduction.
float32 inputs use IEEE float32 products unless torch allows TF32 for matmuls
(``torch.backends.cuda.matmul.allow_tf32``), to match ``nn.Linear``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from conveyor.kernels.triton_kernels import activation


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
    # Grouped tile order: GROUP_M row-tiles walk the column tiles together, so
    # the B tiles they share are still in L2 when the next row-tile needs them.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(
            a_ptr + rm[:, None] * s_am + kk[None, :] * s_ak,
            mask=(rm[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + kk[:, None] * s_bk + rn[None, :] * s_bn,
            mask=(kk[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
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
def _act_grad_kernel(gy_ptr, z_ptr, g_ptr, total, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = gy * activation.grad(z, ACT)
    tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


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
    wide = named_args["a_ptr"].element_size() >= 4
    return [c for c in configs if (c.kwargs["BLOCK_K"] == 32) == wide]


_tuned_kernel = triton.autotune(
    configs=_CONFIGS_16 + _CONFIGS_32,
    key=["M_CLASS", "N", "K"],
    prune_configs_by={"early_config_prune": _prune},
)(_matmul_kernel)


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    act: int = 0,
    keep_z: bool = False,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``act(a @ b + bias)`` for 2-D ``a [M, K]``, ``b [K, N]`` of any strides.

    Returns ``(c [M, N], z)``, ``z`` the pre-activation when ``keep_z``.
    """
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), dtype=out_dtype or a.dtype, device=a.device)
    z = torch.empty_like(c) if keep_z and act else None
    if M == 0 or N == 0:
        return c, z
    args = (
        a, b, c, bias if bias is not None else c, z if z is not None else c,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        triton.next_power_of_2(M),
    )  # fmt: skip
    flags = dict(
        HAS_BIAS=bias is not None, ACT=act, STORE_Z=z is not None,
        PRECISION=_precision(a.dtype), GROUP_M=8,
    )  # fmt: skip
    if a.is_cuda and M * N * K >= _TUNE_WORK:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        _tuned_kernel[grid](*args, **flags)
    else:
        bm, bn, bk = _blocks(M, N, K, a.device)
        grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
        _matmul_kernel[grid](*args, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return c, z


def forward(x, weight, bias, act: int, keep_z: bool):
    """``(y, z)`` for ``x [M, K]``, ``weight [N, K]``; ``weight.T`` is a stride swap."""
    return matmul(x, weight.t(), bias=bias, act=act, keep_z=keep_z)


def backward(gy, z, x, weight, act: int, need):
    """``(dx, dW, db)`` (``None`` where not needed) from ``dy`` and the saved ``z``."""
    g = gy
    if act:
        g = torch.empty_like(gy)
        total = gy.numel()
        block = 1024 if gy.is_cuda else 64
        if total:
            _act_grad_kernel[(triton.cdiv(total, block),)](gy, z, g, total, ACT=act, BLOCK=block)
    gx = matmul(g, weight)[0] if need[0] else None
    gw = matmul(g.t(), x)[0] if need[1] else None
    gb = g.float().sum(0).to(gy.dtype) if need[2] else None
    return gx, gw, gb
