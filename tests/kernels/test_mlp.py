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


def test_module_inference_packs_once_and_training_keeps_gradients(monkeypatch) -> None:
    from conveyor.kernels import mlp as mlp_module

    torch.manual_seed(0)
    model = FusedMLP([16, 32, 8, 1], ["relu", "gelu", "none"])
    x = torch.randn(4, 16)
    packs = []
    real = mlp_module.PackedMLP
    monkeypatch.setattr(mlp_module, "PackedMLP", lambda layers: packs.append(1) or real(layers))
    layers = [(m.weight, m.bias, m.activation) for m in model.layers]
    with torch.no_grad():
        y = model(x)
        model(x)
    assert packs == [1]  # packed on the first call, reused after
    torch.testing.assert_close(y, mlp_reference(x, layers), rtol=1e-5, atol=1e-5)
    # An in-place change (an optimizer step, load_state_dict) moves the version counter.
    with torch.no_grad():
        model.layers[0].weight.mul_(2)
        y2 = model(x)
    assert packs == [1, 1]
    torch.testing.assert_close(y2, mlp_reference(x, layers), rtol=1e-5, atol=1e-5)
    # So does a new Parameter object (its storage is new).
    model.layers[1].weight = torch.nn.Parameter(torch.randn(8, 32))
    layers = [(m.weight, m.bias, m.activation) for m in model.layers]
    with torch.no_grad():
        torch.testing.assert_close(model(x), mlp_reference(x, layers), rtol=1e-5, atol=1e-5)
    assert packs == [1, 1, 1]
    # With autograd on, it runs layer by layer and gradients flow.
    model(x).sum().backward()
    assert packs == [1, 1, 1]
    assert all(m.weight.grad is not None for m in model.layers)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dims"):
        FusedMLP([4], [])
    layers = _layers([4, 3], ["relu"])
    with pytest.raises(ValueError, match="w: expected shape"):
        fused_mlp(torch.randn(2, 5), layers, impl="cpp")


# -- PackedMLP: weights packed once (the serving path) ---------------------------------------


@pytest.mark.parametrize("batch", [0, 1, 2, 3, 5, 6, 7, 8, 13, 96, 97, 200])
@pytest.mark.parametrize(
    ("dims", "acts"),
    [
        ([64, 256, 256, 1], ["relu", "relu", "sigmoid"]),
        ([33, 17, 5], ["gelu", "tanh"]),
        ([7, 40, 31, 3], ["silu", "gelu_tanh", "none"]),
        ([1, 1], ["sigmoid"]),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_matches_reference(batch: int, dims: list[int], acts: list[str], dtype) -> None:
    from conveyor.kernels import PackedMLP

    layers = _layers(dims, acts, dtype, seed=batch + len(dims))
    x = torch.randn(batch, dims[0], dtype=dtype)
    got = PackedMLP(layers)(x)
    want = mlp_reference(x.double(), [(w.double(), b.double(), a) for w, b, a in layers])
    assert got.shape == (batch, dims[-1]) and got.dtype == dtype
    assert_close(got, want, dtype, scale=4)


def test_packed_two_threads_match_one_with_a_narrow_head() -> None:
    # Wide layers split by row blocks and panels, narrow ones (fewer than 16 outputs:
    # dot-product tiles against W as given) by row blocks.
    from conveyor import _C
    from conveyor.kernels import PackedMLP

    packed = PackedMLP(_layers([64, 256, 5, 1], ["relu", "gelu", "sigmoid"], torch.float32))
    x = torch.randn(300, 64)
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        one = packed(x)
        _C.set_num_threads(2)
        two = packed(x)
    finally:
        _C.set_num_threads(before)
    torch.testing.assert_close(one, two, rtol=0, atol=0)


def test_packed_numpy_api_no_bias_leading_dims_and_copies() -> None:
    import numpy as np

    from conveyor.kernels import PackedMLP

    layers = _layers([12, 70, 3], ["relu", "none"], bias=False)
    packed = PackedMLP(layers)
    assert packed.dims == (12, 70, 3) and packed.dtype == np.float32
    x = torch.randn(2, 5, 12)
    want = mlp_reference(x, layers)
    torch.testing.assert_close(packed(x), want, rtol=1e-5, atol=1e-5)
    # numpy in, numpy out; a strided x is copied; out is filled in place.
    xs = torch.randn(12, 9).numpy().T  # [9, 12], not C-contiguous
    out = np.full((9, 3), np.nan, dtype=np.float32)
    assert packed.run(xs, out) is out
    torch.testing.assert_close(
        torch.from_numpy(out), mlp_reference(torch.from_numpy(xs.copy()), layers)
    )
    # The weights were copied at construction: later changes are not seen.
    layers[0][0].zero_()
    torch.testing.assert_close(packed(x), want, rtol=1e-5, atol=1e-5)
    # out=x: the layer overwrote rows of x that later column panels still read.
    square = PackedMLP(_layers([64, 64], ["none"]))
    xs = torch.randn(40, 64).numpy()
    want = square.run(xs.copy())
    assert square.run(xs, out=xs) is xs
    np.testing.assert_allclose(xs, want, rtol=1e-6, atol=1e-6)


def test_packed_threads_share_one_instance() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from conveyor.kernels import PackedMLP

    layers = _layers([64, 256, 256, 1], ["relu", "relu", "sigmoid"])
    packed = PackedMLP(layers)
    xs = [torch.randn(b, 64) for b in (1, 7, 64, 100) * 4]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(packed, xs))
    for x, y in zip(xs, got, strict=True):
        torch.testing.assert_close(y, mlp_reference(x, layers), rtol=1e-5, atol=1e-5)


def test_packed_bad_arguments() -> None:
    import numpy as np

    from conveyor.kernels import PackedMLP

    layers = _layers([4, 3], ["relu"])
    packed = PackedMLP(layers)
    with pytest.raises(ValueError, match=r"x: expected shape \(M, 4\)"):
        packed.run(torch.randn(2, 5).numpy())
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 4\)"):
        packed(torch.randn(2, 5))
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        packed(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="out: expected"):
        packed.run(np.zeros((2, 4), np.float32), np.zeros((2, 2), np.float32))
    read_only = np.zeros((2, packed.out_features), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable"):
        packed.run(np.zeros((2, 4), np.float32), read_only)
    with pytest.raises(ValueError, match="need at least one"):
        PackedMLP([])
    with pytest.raises(ValueError, match="activation"):
        PackedMLP([(layers[0][0], layers[0][1], "softmax")])
    with pytest.raises(ValueError, match="w: expected shape"):
        PackedMLP(layers + _layers([5, 2], ["none"]))  # 3 outputs feed a layer wanting 5
    with pytest.raises(TypeError, match="float32 or float64"):
        PackedMLP([(layers[0][0].half(), None, "relu")])


def test_packed_property_random_shapes() -> None:
    """Any widths, depth, batch and activation mix: the packed path equals the reference."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    from conveyor.kernels import MLP_ACTIVATIONS, PackedMLP

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(
        dims=st.lists(st.integers(1, 80), min_size=2, max_size=5),
        batch=st.integers(0, 40),
        acts=st.lists(st.sampled_from(sorted(MLP_ACTIVATIONS)), min_size=4, max_size=4),
        bias=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def check(dims, batch, acts, bias, seed) -> None:
        layers = _layers(dims, acts[: len(dims) - 1], torch.float64, bias=bias, seed=seed)
        x = torch.randn(batch, dims[0], dtype=torch.float64)
        got = PackedMLP(layers)(x)
        torch.testing.assert_close(got, mlp_reference(x, layers), rtol=1e-10, atol=1e-12)

    check()


def test_packed_from_an_nn_sequential() -> None:
    from torch import nn

    from conveyor.kernels import PackedMLP

    torch.manual_seed(0)
    relu = nn.ReLU()  # one instance used twice is two activations
    model = nn.Sequential(
        nn.Linear(6, 8), relu, nn.Dropout(0.5), nn.Linear(8, 8), relu,
        nn.Sequential(nn.Linear(8, 4), nn.GELU(approximate="tanh")), nn.Linear(4, 1),
    ).eval()  # fmt: skip
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert_close(PackedMLP(model)(x), model(x), torch.float32)
    for bad, message in (
        (
            nn.Sequential(nn.Linear(6, 2), nn.Softmax(dim=-1)),
            r"module 1 \(Softmax\) is not a Linear",
        ),
        (nn.Sequential(nn.ReLU(), nn.Linear(6, 2)), r"module 0 \(ReLU\): an activation must"),
        (nn.Sequential(nn.Linear(6, 2), nn.ReLU(), nn.Tanh()), r"module 2 \(Tanh\): an activation"),
    ):
        with pytest.raises(ValueError, match=message):
            PackedMLP(bad)


def test_packed_activation_none_is_named_none() -> None:
    from conveyor.kernels import PackedMLP

    ((w, b, _),) = _layers([4, 3], ["none"])
    with pytest.raises(ValueError, match='got None \\(no activation is "none"\\)'):
        PackedMLP([(w, b, None)])


@pytest.mark.parametrize("last", [torch.nn.Sigmoid(), torch.nn.Tanh()])
def test_forced_cpp_trains_through_output_activations(last: torch.nn.Module) -> None:
    from conveyor.kernels.mlp import sequential_layers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2), last)
    layers = sequential_layers(model)
    x = torch.randn(4, 5)
    out = fused_mlp(x, layers, impl="cpp")  # parameters require grad: the training path
    assert out.requires_grad
    assert_close(out.detach(), model(x).detach(), torch.float32)
    out.sum().backward()
    assert model[0].weight.grad is not None


def test_zero_input_features_in_more_than_two_dims() -> None:
    from conveyor.kernels import FusedLinear

    layer = FusedLinear(0, 4, "relu")
    x = torch.empty(2, 3, 0)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, -2.0, 3.0, -4.0]))
        out = layer(x)  # no input features: each output is its activated bias
        assert out.shape == (2, 3, 4)
        torch.testing.assert_close(out, torch.relu(layer.bias).expand(2, 3, 4))
