"""Gradients with a graph for the fused ops' autograd Functions.

Their backward runs compiled kernels that autograd cannot see into, so under
``create_graph=True`` (a gradient penalty such as WGAN-GP or R1 differentiates a
gradient) the gradients they return would carry no graph, and the penalty's
contribution would be silently missing. In that case, and only then, the
Functions differentiate the op's torch reference instead: second derivatives
are then exactly torch's (including torch's own "not implemented" errors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def reference_grads(
    reference: Callable[..., torch.Tensor],
    inputs: Sequence[object],
    needs: Sequence[bool],
    grad_out: torch.Tensor,
) -> list[torch.Tensor | None]:
    """Gradients of ``reference(*inputs)`` against ``grad_out`` for the inputs whose
    ``needs`` is set (None for the others), built with ``create_graph=True``."""
    wanted = [i for i, t in enumerate(inputs) if needs[i] and isinstance(t, torch.Tensor)]
    result: list[torch.Tensor | None] = [None] * len(inputs)
    if not wanted:
        return result
    with torch.enable_grad():
        out = reference(*inputs)
    grads = torch.autograd.grad(
        out, [inputs[i] for i in wanted], grad_out, create_graph=True, allow_unused=True
    )
    for i, g in zip(wanted, grads, strict=True):
        result[i] = g
    return result
