"""The fused ops' Python API where torch's own modules set the expectation: inference
tensors, torch.jit.trace, CPU autocast, the meta device, 0-dim inputs, subclassed
modules, and arguments every implementation must treat alike (found by a review,
2026-11-28; each case failed before its fix)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conveyor.kernels import (
    FusedLinear,
    FusedMLP,
    PackedMLP,
    embedding_bag,
    fused_linear,
    histogram_update,
    layer_norm,
    linear_reference,
    mlp_reference,
)


def test_modules_built_under_inference_mode_run_there() -> None:
    # "Inference tensors do not track version counter", raised by the packed-weights cache.
    x = torch.randn(4, 16)
    with torch.inference_mode():
        linear = FusedLinear(16, 8, "relu")
        mlp = FusedMLP([16, 8, 2], ["relu", "none"])
        got, want = linear(x), linear_reference(x, linear.weight, linear.bias, "relu")
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(mlp(x), mlp_reference(x, mlp._layers()))
        with torch.no_grad():  # an in-place change must be seen (no cache to go stale)
            linear.weight.mul_(2)
        torch.testing.assert_close(
            linear(x), linear_reference(x, linear.weight, linear.bias, "relu")
        )


def test_jit_trace_records_the_computation() -> None:
    # The compiled paths write through raw pointers: the trace held only aten::empty and
    # replayed uninitialised memory (errors of 1e14-1e27).
    torch.manual_seed(0)
    x, x2 = torch.randn(300, 64), torch.randn(300, 64)
    linear = FusedLinear(64, 32, "gelu").eval()
    mlp = FusedMLP([64, 32, 4], ["relu", "none"]).eval()
    w = torch.randn(1024)
    big, big2 = torch.randn(256, 1024), torch.randn(256, 1024)  # the C++ layer norm's size
    bag_weight = torch.randn(50, 8)
    indices, offsets = torch.randint(0, 50, (400,)), torch.arange(0, 400, 4)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings
        traced = {
            "linear": torch.jit.trace(linear, x),
            "mlp": torch.jit.trace(mlp, x),
            "layer_norm": torch.jit.trace(lambda t: layer_norm(t, 1024, w), big),
            "bag": torch.jit.trace(
                lambda i: embedding_bag(i, bag_weight, offsets, "mean"), indices
            ),
        }
        torch.testing.assert_close(traced["linear"](x2), linear(x2))
        torch.testing.assert_close(traced["mlp"](x2), mlp(x2))
        torch.testing.assert_close(traced["layer_norm"](big2), layer_norm(big2, 1024, w))
        other = torch.randint(0, 50, (400,))
        torch.testing.assert_close(
            traced["bag"](other), embedding_bag(other, bag_weight, offsets, "mean")
        )


def test_cpu_autocast_gives_one_dtype_as_nn_linear() -> None:
    # float32 from the C++ and packed paths, bfloat16 from the reference, by size and grad mode.
    small, large = torch.randn(2, 8), torch.randn(64, 256)
    w8, w256 = torch.randn(4, 8), torch.randn(256, 256)
    linear, mlp = FusedLinear(256, 256, "relu"), FusedMLP([256, 64, 2], ["relu", "none"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nn.functional.linear(large, w256).dtype == torch.bfloat16
        assert fused_linear(small, w8).dtype == torch.bfloat16
        assert fused_linear(large, w256, activation="relu").dtype == torch.bfloat16
        assert linear(large).dtype == mlp(large).dtype == torch.bfloat16
        with torch.no_grad():
            assert linear(large).dtype == mlp(large).dtype == torch.bfloat16


def test_the_meta_device_works_as_for_nn_linear() -> None:
    # "unknown device type for autocast" from the autocast check.
    x, w = torch.randn(4, 8, device="meta"), torch.randn(3, 8, device="meta")
    assert fused_linear(x, w).shape == (4, 3)
    assert FusedLinear(8, 3, device="meta")(x).shape == (4, 3)


@pytest.mark.parametrize("grad", [True, False])
def test_a_0_dim_input_is_named(grad: bool) -> None:
    # a bare IndexError: tuple index out of range
    x = torch.tensor(1.0)
    with torch.set_grad_enabled(grad):
        for call in (
            lambda: fused_linear(x, torch.randn(2, 4)),
            lambda: FusedLinear(4, 2)(x),
            lambda: FusedMLP([4, 2], ["none"])(x),
        ):
            with pytest.raises(ValueError, match="x: expected at least 1 dimension"):
                call()


def test_subclassed_modules_with_their_own_forward_are_refused() -> None:
    # Matched by isinstance, their forward was dropped: outputs off by 0.5-1.6, no error.
    class ScaledReLU(nn.ReLU):
        def forward(self, x):
            return super().forward(x) * 2

    class Residual(nn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

    class NoisyIdentity(nn.Identity):
        def forward(self, x):
            return x + 1

    class Named(nn.Sequential):  # a subclass that keeps Sequential's forward is fine
        pass

    for seq in (
        nn.Sequential(nn.Linear(4, 8), ScaledReLU(), nn.Linear(8, 2)),
        nn.Sequential(nn.Linear(4, 4), Residual(nn.Linear(4, 4), nn.ReLU())),
        nn.Sequential(nn.Linear(4, 4), NoisyIdentity(), nn.Linear(4, 2)),
    ):
        with pytest.raises(ValueError, match="is not a Linear or a supported activation"):
            PackedMLP(seq)
    seq = Named(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(PackedMLP(seq)(x), seq(x))


@pytest.mark.parametrize("rows", [4, 256])  # the reference, then the C++ path
def test_layer_norm_refuses_a_negative_eps_on_every_path(rows: int) -> None:
    # accepted at 4 rows (the reference), refused at 256 (the C++ binding)
    x = torch.randn(rows, 1024)
    for eps in (-1e-6, float("nan")):
        with pytest.raises(ValueError, match="eps: must be a number >= 0"):
            layer_norm(x, 1024, eps=eps)


def test_histogram_counts_as_a_torch_tensor_or_a_strided_view() -> None:
    values = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    edges = np.tile(np.linspace(-1, 1, 5, dtype=np.float32), (3, 1))
    want = histogram_update(values, edges, impl="reference")
    # numpy values with torch counts: "expected int64 array of shape (3, 7), got
    # (torch.int64, torch.Size([3, 7]))"
    counts = torch.zeros(3, 7, dtype=torch.int64)
    assert histogram_update(values, edges, counts) is counts
    np.testing.assert_array_equal(counts.numpy(), want)
    # a transposed view: the reference counted it, the C++ path said "must be C-contiguous"
    for impl in (None, "reference"):
        strided = np.zeros((7, 3), np.int64).T
        histogram_update(values, edges, strided, impl=impl)
        np.testing.assert_array_equal(strided, want)
