"""Histogram update in Triton (contract: ``conveyor.kernels.histogram``).

One program per block of ``BLOCK_R`` rows, all features at once (a
``[BLOCK_R, features]`` tile, features padded to a power of two). Each value
finds its slot by counting the edges ``<= v`` of its feature (branch-free: the
edges are few and shared by the block's rows); the tile is then reduced to
per-feature counts slot by slot, so a program adds ``features * (n_edges + 2)``
numbers into ``counts`` with atomics instead of one atomic per value (the
first version did that and ran at torch eager's speed on an H200: 36 ms for
16M x 32 values, where the CUDA kernel takes 1.4 ms).

The shape (features, edges) is compiled in: a model's drift histogram has one
fixed shape, and constant bounds let the compiler unroll both loops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _histogram_kernel(
    v_ptr, e_ptr, c_ptr, rows,
    FEATURES: tl.constexpr, F_PAD: tl.constexpr, N_EDGES: tl.constexpr,
    BLOCK_R: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    f = tl.arange(0, F_PAD)
    f_ok = f < FEATURES
    mask = (r[:, None] < rows) & f_ok[None, :]
    v = tl.load(v_ptr + r[:, None] * FEATURES + f[None, :], mask=mask, other=0.0)
    slot = tl.zeros((BLOCK_R, F_PAD), dtype=tl.int32)
    for k in tl.static_range(N_EDGES):
        e = tl.load(e_ptr + f * N_EDGES + k, mask=f_ok, other=0.0)
        slot += (v >= e[None, :]).to(tl.int32)
    top = tl.load(e_ptr + f * N_EDGES + (N_EDGES - 1), mask=f_ok, other=0.0)
    slot = tl.where(v == top[None, :], N_EDGES - 1, slot)  # the top edge closes the last bin
    slot = tl.where(v != v, N_EDGES + 1, slot)  # NaN
    slot = tl.where(mask, slot, -1)  # padding counts nowhere
    for s in tl.static_range(N_EDGES + 2):
        n = tl.sum((slot == s).to(tl.int32), axis=0)
        tl.atomic_add(c_ptr + f * (N_EDGES + 2) + s, n.to(tl.int64), mask=f_ok & (n > 0))


def histogram_update(values: torch.Tensor, edges: torch.Tensor, counts: torch.Tensor) -> None:
    """Add slot counts of float32 ``values [rows, features]`` into int64 ``counts``."""
    rows, features = values.shape
    if values.numel() == 0:
        return
    f_pad = triton.next_power_of_2(features)
    # About 4096 values a program on a GPU (registers), 256 in the interpreter (time).
    budget = 4096 if values.is_cuda else 256
    block_r = max(1, budget // f_pad)
    _histogram_kernel[(triton.cdiv(rows, block_r),)](
        values, edges, counts, rows,
        FEATURES=features, F_PAD=f_pad, N_EDGES=edges.shape[1], BLOCK_R=block_r,
    )  # fmt: skip
