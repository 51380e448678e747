"""conveyor._C carries every fused op: CPU always, CUDA whenever nvcc built it."""

import os
import shutil

from conveyor import _C

CPU_OPS = (
    "linear_forward",
    "linear_forward_ptr",
    "linear_backward",
    "mlp_forward",
    "embedding_bag_forward",
    "embedding_bag_forward_ptr",
    "embedding_bag_backward",
    "layer_norm_forward",
    "layer_norm_forward_ptr",
    "layer_norm_backward",
)
CUDA_OPS = (
    "linear_forward_cuda",
    "linear_backward_cuda",
    "embedding_bag_forward_cuda",
    "embedding_bag_backward_cuda",
    "layer_norm_forward_cuda",
    "layer_norm_backward_cuda",
)


def test_cpu_ops_are_built() -> None:
    missing = [name for name in CPU_OPS if not hasattr(_C, name)]
    assert not missing, f"conveyor._C lacks {missing}"


def test_cuda_ops_are_built_when_nvcc_is_present() -> None:
    # CI has nvcc and no GPU: this keeps the new .cu files compiling.
    if os.environ.get("CONVEYOR_CUDA", "AUTO").upper() == "OFF" or not shutil.which("nvcc"):
        return
    missing = [name for name in CUDA_OPS if not hasattr(_C, name)]
    assert not missing, f"nvcc is on PATH but conveyor._C lacks {missing}"
