"""Whole-MLP inference in one call: the small-batch serving path.

``fused_mlp(x, layers)`` computes ``h = act_L(... act_1(x @ W_1.T + b_1) ...)``
for ``layers = [(W_l [N_l, K_l], b_l [N_l] or None, activation_l), ...]``
(activations as ``conveyor.kernels.ACTIVATIONS``), ``x [..., K_1]``. The ``cpp``
implementation runs every layer inside one call to ``conveyor._C`` (intermediate
activations in one scratch buffer), which at serving batch sizes removes most
of the per-op dispatch cost of eager torch. Inference only: when autograd
needs the graph, or on devices without an implementation, it runs the layers
as ``fused_linear`` calls (the dispatcher's choice per layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from conveyor.kernels import dispatch
from conveyor.kernels.linear import ACTIVATIONS, FusedLinear, fused_linear, linear_reference

Layer = tuple[torch.Tensor, torch.Tensor | None, str]


def mlp_reference(x: torch.Tensor, layers: Sequence[Layer]) -> torch.Tensor:
    """``nn.Linear`` + activation per layer in torch eager: the definition."""
    for w, b, act in layers:
        x = linear_reference(x, w, b, act)
    return x


def fused_mlp(x: torch.Tensor, layers: Sequence[Layer], *, impl: str | None = None) -> torch.Tensor:
    """Run the MLP ``layers`` on ``x [..., K]``; returns ``[..., N_last]``.

    ``impl``: ``"cpp"`` (one call, inference only), ``"reference"``, or ``None``
    for ``dispatch.choose`` (env ``CONVEYOR_MLP_IMPL``).
    """
    if not layers:
        return x
    tensors = [x] + [t for w, b, _ in layers for t in (w, b)]
    grad = dispatch.needs_grad(*tensors)
    lead = x.shape[:-1]
    work = math.prod(lead) * sum(w.shape[0] * w.shape[1] for w, _, _ in layers)
    chosen = dispatch.choose("mlp", x.device.type, x.dtype, impl, work=work, grad=grad)
    if chosen == "reference" or grad:
        if chosen == "reference":
            return mlp_reference(x, layers)
        for w, b, act in layers:  # autograd needs the graph: one fused_linear per layer
            x = fused_linear(x, w, b, act)
        return x
    return _run_cpp(x, _pack(layers))


def _pack(layers: Sequence[Layer]) -> list[tuple]:
    """The ``(w, b, act_code)`` numpy views ``conveyor._C.mlp_forward`` takes."""
    packed = []
    for w, b, act in layers:
        if act not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {tuple(ACTIVATIONS)}, got {act!r}")
        bias = None if b is None else b.detach().contiguous().numpy()
        packed.append((w.detach().contiguous().numpy(), bias, ACTIVATIONS[act]))
    return packed


def _run_cpp(x: torch.Tensor, packed: list[tuple]) -> torch.Tensor:
    from conveyor import _C

    lead = x.shape[:-1]
    if x.dim() != 2 or not x.is_contiguous():
        x = x.reshape(math.prod(lead), x.shape[-1]).contiguous()
    # numpy for the output buffer: at serving sizes each torch allocation and
    # view costs about as much as the MLP itself.
    out = np.empty((x.shape[0], packed[-1][0].shape[0]), dtype=packed[-1][0].dtype)
    _C.mlp_forward(x.detach().numpy(), packed, out)
    return torch.from_numpy(out).reshape(*lead, out.shape[-1])


class FusedMLP(nn.Module):
    """A stack of ``FusedLinear`` layers; inference runs them in one call.

    Args:
        dims: ``[in, hidden..., out]`` feature sizes.
        activations: one per layer (``len(dims) - 1``), keys of ``ACTIVATIONS``.
        impl: forced implementation for the whole-MLP call (default: dispatcher).
    """

    def __init__(
        self, dims: Sequence[int], activations: Sequence[str], *, impl: str | None = None
    ) -> None:
        super().__init__()
        if len(dims) < 2 or len(activations) != len(dims) - 1:
            raise ValueError("dims: need [in, ..., out] and one activation per layer")
        self.layers = nn.ModuleList(
            FusedLinear(k, n, a) for k, n, a in zip(dims[:-1], dims[1:], activations, strict=True)
        )
        self.impl = impl
        self._work_per_row = sum(m.out_features * m.in_features for m in self.layers)
        self.refresh()

    def refresh(self) -> None:
        """Forget the cached parameter views (after replacing a Parameter object)."""
        self._params = [p for m in self.layers for p in (m.weight, m.bias) if p is not None]
        self._packed = None

    def _layers(self) -> list[Layer]:
        return [(m.weight, m.bias, m.activation) for m in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu":
            return fused_mlp(x, self._layers(), impl=self.impl)
        work = (x.numel() // max(1, x.shape[-1])) * self._work_per_row
        if dispatch.choose("mlp", "cpu", x.dtype, self.impl, work=work) != "cpp":
            return fused_mlp(x, self._layers(), impl="reference")
        # Serving hot path: the numpy views of the parameters are built once and
        # reused until a parameter changes storage (.to(), load into a new
        # tensor) or is modified in place (its version counter moves, e.g. an
        # optimizer step or load_state_dict). Assigning a new Parameter object
        # to a layer is not seen: call refresh() after doing that.
        key = tuple((p.data_ptr(), p._version) for p in self._params)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, _pack(self._layers()))
        return _run_cpp(x, self._packed[1])
