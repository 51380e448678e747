"""The model family: shapes, normalisation, empty batches, the fused-op seam, TorchScript."""

# torch 2.10+ warns that TorchScript is deprecated; it is the format the engine loads.

from __future__ import annotations

import copy

import pytest
import torch

from conveyor.kernels import FusedLinear
from conveyor.trainer.model import LinearAct, TabularModel, make_linear, to_reference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _model(**kw) -> TabularModel:
    torch.manual_seed(0)
    return TabularModel([1.0, -2.0], [2.0, 0.0], [3, 5], out_dim=4, **kw).eval()


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "tanh"])
def test_forward_shape_and_script_match(activation: str, layer_norm: bool) -> None:
    model = _model(hidden=(8, 4), activation=activation, layer_norm=layer_norm)
    x = torch.randn(6, 2)
    c = torch.tensor([[0, 5], [1, 4], [2, 3], [3, 2], [1, 1], [0, 0]])
    out = model(x, c)
    assert out.shape == (6, 4)
    # Export scripts the plain-torch form of the (fused) training model: same function.
    plain = to_reference(copy.deepcopy(model))
    assert not any(isinstance(m, FusedLinear) for m in plain.modules())
    torch.testing.assert_close(torch.jit.script(plain)(x, c), out, rtol=1e-5, atol=1e-6)


def test_training_model_uses_the_fused_linear_where_it_can() -> None:
    fused = _model(hidden=(8, 4), activation="relu")
    assert any(isinstance(m, FusedLinear) for m in fused.modules())
    tanh = _model(hidden=(8, 4), activation="tanh")  # not a fused activation: plain torch
    plain = [m for m in tanh.modules() if isinstance(m, LinearAct)]
    assert len(plain) == 2 and all(isinstance(m.act, torch.nn.Tanh) for m in plain)


def test_normalisation_uses_stats_and_treats_zero_std_as_one() -> None:
    model = _model()
    x = torch.tensor([[3.0, 5.0]])
    seen = {}
    model.mlp.register_forward_pre_hook(lambda m, args: seen.setdefault("in", args[0]))
    model(x, torch.zeros(1, 2, dtype=torch.long))
    # (3 - 1) / 2 = 1; the second feature has std 0: (5 - -2) / 1 = 7
    torch.testing.assert_close(seen["in"][0, :2], torch.tensor([1.0, 7.0]))


def test_categorical_ids_of_different_features_do_not_share_rows() -> None:
    model = _model(dropout=0.0)
    x = torch.zeros(2, 2)
    a = model(x, torch.tensor([[1, 0], [0, 1]]))
    assert not torch.allclose(a[0], a[1])


def test_empty_batch_runs_forward_and_backward() -> None:
    model = _model().train()
    out = model(torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.long))
    assert out.shape == (0, 4)
    out.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_numeric_only_and_categorical_only_models() -> None:
    num = TabularModel([0.0], [1.0], [], out_dim=1)
    assert num(torch.ones(3, 1), torch.zeros(3, 0, dtype=torch.long)).shape == (3, 1)
    cat = TabularModel([], [], [4], out_dim=2)
    assert cat(torch.zeros(3, 0), torch.tensor([[1], [2], [0]])).shape == (3, 2)


def test_make_linear_falls_back_to_torch_with_the_same_math() -> None:
    torch.manual_seed(0)
    layer = make_linear(5, 3, "gelu")
    x = torch.randn(4, 5)
    if isinstance(layer, LinearAct):
        expected = torch.nn.functional.gelu(x @ layer.linear.weight.T + layer.linear.bias)
        torch.testing.assert_close(layer(x), expected)
    else:  # conveyor.kernels provides a fused op: it must match the torch reference
        ref = to_reference(torch.nn.Sequential(layer))[0]
        assert isinstance(ref, LinearAct)
        torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-4)
        expected = torch.nn.functional.gelu(x @ layer.weight.T + layer.bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_parameter_names_do_not_depend_on_dropout(layer_norm: bool) -> None:
    # A checkpoint of one --dropout must load into the model of another (resume may change it).
    names = [
        list(_model(hidden=(8, 4), dropout=p, layer_norm=layer_norm).state_dict())
        for p in (0.0, 0.3)
    ]
    assert names[0] == names[1]
    _model(hidden=(8, 4), dropout=0.3, layer_norm=layer_norm).load_state_dict(
        _model(hidden=(8, 4), dropout=0.0, layer_norm=layer_norm).state_dict()
    )
