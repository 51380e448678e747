"""conveyor.kernels: fused ops, each with a torch reference, compiled implementations
(C++ CPU, Triton, CUDA) and one dispatcher (``conveyor.kernels.dispatch``)."""

from conveyor.kernels.embedding_bag import embedding_bag, embedding_bag_reference
from conveyor.kernels.histogram import (
    histogram_slots,
    histogram_update,
    histogram_update_reference,
)
from conveyor.kernels.layer_norm import layer_norm, layer_norm_reference
from conveyor.kernels.linear import ACTIVATIONS, FusedLinear, fused_linear, linear_reference
from conveyor.kernels.mlp import MLP_ACTIVATIONS, FusedMLP, PackedMLP, fused_mlp, mlp_reference

__all__ = [
    "ACTIVATIONS",
    "MLP_ACTIVATIONS",
    "FusedLinear",
    "FusedMLP",
    "PackedMLP",
    "embedding_bag",
    "embedding_bag_reference",
    "fused_linear",
    "fused_mlp",
    "histogram_slots",
    "histogram_update",
    "histogram_update_reference",
    "layer_norm",
    "layer_norm_reference",
    "linear_reference",
    "mlp_reference",
]
