"""The compiled extension: built as configured, importable everywhere."""

import os
import shutil

from conveyor import _C


def test_build_info_reports_openmp_and_cuda() -> None:
    info = _C.build_info()
    assert set(info) >= {"openmp", "omp_max_threads", "cuda", "compiler"}
    assert info["omp_max_threads"] >= 1


def test_cuda_sources_were_compiled_when_nvcc_is_present() -> None:
    # CI has nvcc but no GPU: this is what keeps the .cu files from rotting unseen.
    if os.environ.get("CONVEYOR_CUDA", "AUTO").upper() == "OFF" or not shutil.which("nvcc"):
        assert _C.cuda_device_count() == 0 or _C.build_info()["cuda"]
        return
    assert _C.build_info()["cuda"], "nvcc is on PATH but conveyor._C was built without CUDA"
    assert hasattr(_C, "histogram_update_cuda")


def test_cuda_device_count_without_driver_is_zero_not_an_error() -> None:
    assert _C.cuda_device_count() >= 0
