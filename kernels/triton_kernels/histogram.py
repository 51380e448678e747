"""Histogram update in Triton (contract: ``conveyor.kernels.histogram``).

One program per block of the flattened ``values[rows * features]``; each value
finds its slot by counting the edges ``<= v`` of its feature (branch-free, the
edges are few) and adds 1 with an int64 atomic into ``counts``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _histogram_kernel(
    v_ptr, e_ptr, c_ptr, total, features, n_edges, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    f = offs % features
    e_row = e_ptr + f * n_edges
    slot = tl.zeros((BLOCK,), dtype=tl.int64)
    for k in range(0, n_edges):
        e = tl.load(e_row + k, mask=mask, other=0.0)
        slot += (v >= e).to(tl.int64)
    top = tl.load(e_row + n_edges - 1, mask=mask, other=0.0)
    slot = tl.where(v == top, n_edges - 1, slot)
    slot = tl.where(v != v, n_edges + 1, slot)
    ones = tl.full((BLOCK,), 1, tl.int64)
    tl.atomic_add(c_ptr + f * (n_edges + 2) + slot, ones, mask=mask)


def histogram_update(values: torch.Tensor, edges: torch.Tensor, counts: torch.Tensor) -> None:
    """Add slot counts of float32 ``values [rows, features]`` into int64 ``counts``."""
    total = values.numel()
    if total == 0:
        return
    block = 1024 if values.is_cuda else 256
    _histogram_kernel[(triton.cdiv(total, block),)](
        values, edges, counts, total, values.shape[1], edges.shape[1], BLOCK=block
    )
