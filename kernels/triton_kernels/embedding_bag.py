"""Embedding bag in Triton (contract: ``conveyor.kernels.embedding_bag``).

Forward: one program per (bag, block of D columns) walks its bag's indices
and accumulates rows in float32. Backward: one program per index position
adds ``scale * grad_out[bag]`` into a float32 ``grad_weight`` with atomics
(rows repeat across bags) and, when asked, writes
``grad_psw[j] = <weight[idx[j]], grad_out[bag]>``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _forward_kernel(
    w_ptr, idx_ptr, off_ptr, psw_ptr, out_ptr, nnz, B, D,
    HAS_PSW: tl.constexpr, MEAN: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)  # b * D passes 2^31 on large outputs
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    start = tl.load(off_ptr + b)
    end = tl.load(off_ptr + b + 1, mask=b + 1 < B, other=nnz)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j in range(start, end):
        row = tl.load(idx_ptr + j)
        v = tl.load(w_ptr + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_PSW:
            v = v * tl.load(psw_ptr + j).to(tl.float32)
        acc += v
    if MEAN:
        acc = acc / tl.maximum(end - start, 1).to(tl.float32)
    tl.store(out_ptr + b * D + cols, acc.to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _backward_kernel(
    go_ptr, w_ptr, idx_ptr, bag_ptr, scale_ptr, gw_ptr, gpsw_ptr, D,
    NEED_PSW: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    j = tl.program_id(0)
    row = tl.load(idx_ptr + j)
    bag = tl.load(bag_ptr + j)
    scale = tl.load(scale_ptr + j)
    dot = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < D
        g = tl.load(go_ptr + bag * D + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.atomic_add(gw_ptr + row * D + cols, g * scale, mask=cmask)
        if NEED_PSW:
            dot += g * tl.load(w_ptr + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
    if NEED_PSW:
        tl.store(gpsw_ptr + j, tl.sum(dot, axis=0).to(gpsw_ptr.dtype.element_ty))


def _block_d(D: int, device: torch.device) -> int:
    cap = 256 if device.type == "cuda" else 32
    return max(16, min(cap, triton.next_power_of_2(max(D, 1))))


def forward(weight, indices, offsets, psw, mode: int):
    """``[B, D]`` pooled rows; ``mode`` 0 sum, 1 mean."""
    B, (_, D) = offsets.shape[0], weight.shape
    out = weight.new_empty((B, D))
    if B == 0 or D == 0:
        return out
    bd = _block_d(D, weight.device)
    _forward_kernel[(B, triton.cdiv(D, bd))](
        weight, indices, offsets, psw if psw is not None else weight, out,
        indices.shape[0], B, D, HAS_PSW=psw is not None, MEAN=mode == 1, BLOCK_D=bd,
    )  # fmt: skip
    return out


def backward(grad_out, weight, indices, offsets, psw, mode: int, need_psw: bool):
    """``(grad_weight [V, D], grad_psw [nnz] or None)``."""
    nnz = indices.shape[0]
    B = offsets.shape[0]
    V, D = weight.shape
    grad_weight = torch.zeros((V, D), dtype=torch.float32, device=weight.device)
    grad_psw = torch.empty_like(psw) if need_psw else None
    if nnz == 0 or B == 0 or D == 0:
        if grad_psw is not None:
            grad_psw.zero_()
        return grad_weight.to(weight.dtype), grad_psw
    # Bag of each position and its scale, from the offsets without a host sync.
    ends = torch.cat([offsets[1:], offsets.new_tensor([nnz])])
    lengths = ends - offsets
    bag = torch.repeat_interleave(torch.arange(B, device=weight.device), lengths, output_size=nnz)
    if psw is not None:
        scale = psw.float()
    elif mode == 1:
        scale = (1.0 / lengths.clamp(min=1).float())[bag]
    else:
        scale = torch.ones(nnz, dtype=torch.float32, device=weight.device)
    bd = _block_d(D, weight.device)
    _backward_kernel[(nnz,)](
        grad_out, weight, indices, bag, scale.contiguous(), grad_weight,
        grad_psw if grad_psw is not None else scale, D, NEED_PSW=need_psw, BLOCK_D=bd,
    )  # fmt: skip
    return grad_weight.to(weight.dtype), grad_psw
