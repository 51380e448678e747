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
    "act_grad_cuda",
    "embedding_bag_forward_cuda",
    "embedding_bag_backward_cuda",
    "layer_norm_forward_cuda",
    "layer_norm_backward_cuda",
)


def test_the_cpu_thread_count_holds_in_every_thread() -> None:
    # OpenMP's setting is per calling thread: set on the main thread, a serving thread
    # still started a team as large as the machine. In a fresh process, so that no
    # earlier test's OpenMP threads are counted.
    import subprocess
    import sys

    code = """
import os, threading
import numpy as np
from conveyor import _C
from conveyor.kernels import PackedMLP
import torch
_C.set_num_threads(1)
packed = PackedMLP([(torch.randn(512, 512), None, "relu")])
x = np.random.rand(512, 512).astype(np.float32)
count = lambda: len(os.listdir("/proc/self/task"))
packed.run(x)
before = count()
seen = {}
def work():
    packed.run(x)
    seen["threads"], seen["setting"] = count(), _C.get_num_threads()
worker = threading.Thread(target=work)
worker.start(); worker.join()
print(before, seen["threads"], seen["setting"])
"""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    before, during, setting = map(int, done.stdout.split())
    assert setting == 1 and during == before + 1  # the worker itself, no OpenMP team


def test_cpu_ops_are_built() -> None:
    missing = [name for name in CPU_OPS if not hasattr(_C, name)]
    assert not missing, f"conveyor._C lacks {missing}"


def test_cuda_ops_are_built_when_nvcc_is_present() -> None:
    # CI has nvcc and no GPU: this keeps the new .cu files compiling.
    if os.environ.get("CONVEYOR_CUDA", "AUTO").upper() == "OFF" or not shutil.which("nvcc"):
        return
    missing = [name for name in CUDA_OPS if not hasattr(_C, name)]
    assert not missing, f"nvcc is on PATH but conveyor._C lacks {missing}"
