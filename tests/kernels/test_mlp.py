"""fused_mlp / FusedMLP: the one-call inference path against the layer-by-layer reference."""

from __future__ import annotations

import math

import pytest
import torch
from _tolerances import assert_close

from conveyor.kernels import FusedMLP, fused_mlp, mlp_reference


def _layers(dims, acts, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, n, a in zip(dims[:-1], dims[1:], acts, strict=True):
        w = (torch.randn(n, k, generator=g, dtype=torch.float64) / math.sqrt(k)).to(dtype)
        b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) if bias else None
        out.append((w, b, a))
    return out


@pytest.mark.parametrize(
    ("batch", "dims", "acts"),
    [
        (1, [64, 128, 64, 1], ["relu", "relu", "none"]),
        (7, [33, 17, 5], ["gelu", "silu"]),
        (256, [100, 300, 10], ["gelu_tanh", "none"]),
        (0, [8, 4], ["relu"]),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_reference(batch: int, dims: list[int], acts: list[str], dtype) -> None:
    layers = _layers(dims, acts, dtype, seed=batch)
    x = torch.randn(batch, dims[0], dtype=dtype)
    got = fused_mlp(x, layers, impl="cpp")
    want = mlp_reference(x.double(), [(w.double(), b.double(), a) for w, b, a in layers])
    assert got.shape == (batch, dims[-1]) and got.dtype == dtype
    assert_close(got, want, dtype, scale=4)


def test_no_bias_and_leading_dims() -> None:
    layers = _layers([12, 6, 3], ["relu", "none"], bias=False)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(fused_mlp(x, layers, impl="cpp"), mlp_reference(x, layers))


def test_module_inference_is_one_call_and_training_keeps_gradients(monkeypatch) -> None:
    from conveyor import _C

    torch.manual_seed(0)
    model = FusedMLP([16, 32, 8, 1], ["relu", "gelu", "none"])
    x = torch.randn(4, 16)
    calls = []
    real = _C.mlp_forward
    monkeypatch.setattr(_C, "mlp_forward", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        y = model(x)
    assert calls == [1]
    layers = [(m.weight, m.bias, m.activation) for m in model.layers]
    torch.testing.assert_close(y, mlp_reference(x, layers), rtol=1e-5, atol=1e-5)
    # With autograd on, it runs layer by layer and gradients flow.
    model(x).sum().backward()
    assert calls == [1]
    assert all(m.weight.grad is not None for m in model.layers)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dims"):
        FusedMLP([4], [])
    layers = _layers([4, 3], ["relu"])
    with pytest.raises(ValueError, match="w: expected shape"):
        fused_mlp(torch.randn(2, 5), layers, impl="cpp")
