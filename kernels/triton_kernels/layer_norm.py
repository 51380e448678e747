"""Row-wise layer norm in Triton (contract: ``conveyor.kernels.layer_norm``).

Forward: one program per row, the whole row in one block (``N`` up to
``MAX_N``), statistics in float32, saves ``mean`` and ``rstd`` (float32).
Backward: each program takes a contiguous group of rows, writes their ``dx``
and keeps partial column sums for ``dweight``/``dbias`` in registers; the
partials ``[programs, N]`` are summed by torch (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_N = 65536


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, N, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)  # row * N passes 2^31 on large inputs
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    d = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / N + eps)
    y = d * rstd
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * N + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward_kernel(
    gy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, gx_ptr, pw_ptr, pb_ptr, M, N, rows_per_prog,
    HAS_W: tl.constexpr, NEED_GX: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.full((BLOCK_N,), 1.0, tl.float32)
    acc_w = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    r0 = pid.to(tl.int64) * rows_per_prog  # r * N passes 2^31 on large inputs
    for r in range(r0, tl.minimum(r0 + rows_per_prog, M)):
        x = tl.load(x_ptr + r * N + cols, mask=mask, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + r * N + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + r)
        rstd = tl.load(rstd_ptr + r)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        acc_w += gy * xhat
        acc_b += gy
        if NEED_GX:
            g = gy * w
            a = tl.sum(g, axis=0) / N
            c = tl.sum(g * xhat, axis=0) / N
            gx = rstd * (g - a - xhat * c)
            tl.store(gx_ptr + r * N + cols, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(pw_ptr + pid * N + cols, acc_w, mask=mask)
    tl.store(pb_ptr + pid * N + cols, acc_b, mask=mask)


def _block_n(N: int) -> int:
    if N > MAX_N:
        raise ValueError(f"layer_norm (triton): rows of {N} > {MAX_N} elements are not supported")
    return triton.next_power_of_2(max(N, 1))


def forward(x, weight, bias, eps: float):
    """``(y, mean, rstd)`` for ``x [M, N]``; mean/rstd float32 ``[M]``."""
    M, N = x.shape
    y = torch.empty_like(x)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    if M == 0:
        return y, mean, rstd
    _forward_kernel[(M,)](
        x, weight if weight is not None else x, bias if bias is not None else x, y, mean, rstd,
        N, eps, HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_N=_block_n(N),
    )  # fmt: skip
    return y, mean, rstd


def backward(gy, x, weight, mean, rstd, need):
    """``(dx, dweight, dbias)``, ``None`` where not needed."""
    M, N = x.shape
    gx = torch.empty_like(x) if need[0] else None
    programs = max(1, min(M, 4 * 132 if x.is_cuda else 2))
    rows_per_prog = triton.cdiv(max(M, 1), programs)
    programs = triton.cdiv(max(M, 1), rows_per_prog)
    pw = torch.zeros((programs, N), dtype=torch.float32, device=x.device)
    pb = torch.zeros_like(pw)
    if M:
        _backward_kernel[(programs,)](
            gy, x, weight if weight is not None else x, mean, rstd,
            gx if gx is not None else x, pw, pb, M, N, rows_per_prog,
            HAS_W=weight is not None, NEED_GX=gx is not None, BLOCK_N=_block_n(N),
        )  # fmt: skip
    gw = pw.sum(0).to(x.dtype) if need[1] else None
    gb = pb.sum(0).to(x.dtype) if need[2] else None
    return gx, gw, gb
