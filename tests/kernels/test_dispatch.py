"""The dispatcher: defaults, forcing by argument and environment, fallbacks."""

from __future__ import annotations

import os

import pytest
import torch

from conveyor.kernels import dispatch, fused_linear


def test_cpu_defaults_are_available_implementations() -> None:
    for op in dispatch.OPS:
        impl = dispatch.choose(op, "cpu", torch.float32, work=1 << 20)
        assert impl in ("cpp", "reference")
        assert dispatch.available(op, impl, "cpu", torch.float32)


def test_cpu_rules_pick_torch_where_it_measured_faster() -> None:
    if not dispatch.has_compiled("linear_forward"):
        pytest.skip("conveyor._C not built")
    f32 = torch.float32
    assert dispatch.choose("linear", "cpu", f32, work=32 * 256 * 256) == "reference"
    assert dispatch.choose("linear", "cpu", f32, work=512**3) == "cpp"
    assert dispatch.choose("layer_norm", "cpu", f32, work=64 * 256) == "reference"
    assert dispatch.choose("layer_norm", "cpu", f32, work=4096 * 256) == "cpp"
    assert dispatch.choose("layer_norm", "cpu", f32, work=512 * 256) == "cpp"  # inference
    assert dispatch.choose("layer_norm", "cpu", f32, work=512 * 256, grad=True) == "reference"
    eb = ("embedding_bag", "cpu", f32)
    assert dispatch.choose(*eb, work=1 << 20, detail=("sum", 64)) == "reference"
    assert dispatch.choose(*eb, work=1 << 20, detail=("mean", 64)) == "cpp"  # 1.2-2.9x
    assert dispatch.choose(*eb, work=1 << 20) == "reference"  # mode unknown
    assert dispatch.choose(*eb, work=1 << 20, grad=True, detail=("sum", 64)) == "cpp"
    assert dispatch.choose("histogram", "cpu", f32) == "cpp"


@pytest.mark.parametrize("wide", [True, False])
def test_cpu_linear_rule_reads_the_layer_and_the_vector_width(monkeypatch, wide: bool) -> None:
    # With AVX-512 the small-batch forward's 4 x 4 dot tiles beat torch from 2^19-2^20
    # multiply-adds when K >= 128 (and 2 rows or more); training from 2^21. Without
    # them, C++ only from 2^22, as before those tiles. Narrow GEMMs and one-row
    # training stay on torch at every size.
    monkeypatch.setattr(dispatch, "_cpu_wide_vectors", lambda: wide)

    # Rows a dot-product path takes on AVX-512 (csrc/cpu/linear.cpp), both ways.
    def gemm_path(m: int, n: int, k: int) -> bool:
        narrow = n < 16 or (n < 64 and k >= 128)
        return m > 8 and not (wide and (m <= 128 or narrow))

    monkeypatch.setattr(dispatch, "_gemm_path", gemm_path)
    rule = dispatch._CPU_RULES["linear"]

    def pick(M: int, N: int, K: int, grad: bool = False) -> str:
        return rule(M * N * K, grad, (M, N, K, "relu"))

    assert pick(2048, 1024, 1024) == pick(64, 256, 256) == "cpp"  # 2^22 and up
    assert pick(2048, 1024, 1024, grad=True) == "cpp"
    assert pick(16, 256, 256) == ("cpp" if wide else "reference")  # 2^20
    assert pick(8, 256, 256) == ("cpp" if wide else "reference")  # 2^19, K >= 256
    assert pick(2, 512, 1024) == ("cpp" if wide else "reference")  # two rows
    assert pick(16, 256, 128) == "reference"  # 2^19, K = 128
    assert pick(64, 256, 64) == "reference"  # K < 128: torch's GEMM wins
    assert pick(1, 1024, 1024) == "reference"  # one row, 2^20
    assert pick(1, 1024, 4096) == "cpp"  # one row, 2^22: inference
    assert pick(1, 1024, 4096, grad=True) == "reference"  # dx, dW of one row: 0.3x
    assert pick(1024, 8, 512) == ("cpp" if wide else "reference")  # GEMM 0.6x; dot 2.9x
    assert pick(1024, 20, 100) == "reference"  # the GEMM with 20 outputs (K < 128)
    assert pick(128, 16, 512) == ("cpp" if wide else "reference")  # dot tiles: 1.1x
    assert pick(4096, 16, 512, grad=True) == ("cpp" if wide else "reference")  # 1.1x
    assert pick(4096, 4, 512, grad=True) == "reference"  # one output: 0.5x
    assert pick(32, 256, 256, grad=True) == ("cpp" if wide else "reference")  # 2^21
    assert pick(16, 256, 256, grad=True) == "reference"
    assert pick(1, 1, 1, grad=True) == pick(1, 1, 1) == "reference"
    assert rule(1 << 20, False, ()) == "reference"  # shape unknown: size alone
    assert rule(1 << 22, True, ()) == "cpp"


def test_cpu_linear_rule_asks_the_module_which_forward_path_runs() -> None:
    from conveyor import _C

    wide = _C.cpu_wide_vectors()
    dot = _C.linear_uses_dot_products
    assert dot(8, 256, 64) and not dot(300, 256, 512) and not dot(300, 64, 512)
    assert dot(64, 256, 128) == dot(300, 8, 512) == dot(300, 63, 128) == wide
    assert dispatch._gemm_path(300, 256, 512) and not dispatch._gemm_path(4, 256, 1024)


def test_cuda_linear_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    # The rule alone (no GPU needed): which shapes go to Triton's GEMM and which
    # to cuBLASLt with the activation in its epilogue, on CUDA.
    rule = dispatch._CUDA_RULES["linear"]
    bf16, f32 = torch.bfloat16, torch.float32
    layer = (262144, 256, 256, "relu")  # the trainer's 256 -> 256 layer, large batch
    big = 262144 * 256 * 256
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert rule(big, False, bf16, layer) == ("cublaslt",)
    # 16-bit training from 2^25 outputs (1.00-1.47x eager with the CUDA act_grad, run 14).
    assert rule(big, True, bf16, layer) == ("cublaslt",)
    assert rule(32768 * 256 * 256, True, bf16, (32768, 256, 256, "relu")) == ()  # 2^23
    assert rule(big, False, bf16, (*layer[:3], "gelu")) == ()  # no erf-GELU epilogue
    assert rule(big, False, bf16, (*layer[:3], "gelu_tanh")) == ("cublaslt",)
    assert rule(big, True, bf16, (*layer[:3], "gelu_tanh")) == ()  # its derivative needs z
    square = (8192, 4096, 4096, "relu")
    assert rule(8192 * 4096 * 4096, False, bf16, square) == ("cublaslt",)
    assert rule(8192 * 4096 * 4096, True, torch.float16, square) == ("cublaslt",)  # 1.07x
    assert rule(8192 * 4096 * 4096, False, bf16, (*square[:3], "silu")) == ()
    # Inference below 2^22 outputs is host-bound: eager's path is shorter.
    assert rule(4096 * 256 * 256, False, bf16, (4096, 256, 256, "relu")) == ()
    assert rule(16384 * 256 * 256, False, bf16, (16384, 256, 256, "relu")) == ("cublaslt",)
    assert rule(big, True, f32, layer) == ("triton",)  # 3xTF32 against the IEEE SGEMM
    narrow = (262144, 256, 64, "relu")  # the 64 -> 256 input layer
    assert rule(262144 * 256 * 64, False, f32, narrow) == ("triton",)
    assert rule(262144 * 256 * 64, True, f32, narrow) == ("cublaslt",)  # 1.07x eager
    assert rule(4096 * 256 * 64, True, f32, (4096, 256, 64, "relu")) == ()  # 2^20 outputs
    assert rule(262144 * 256 * 64, True, f32, (*narrow[:3], "gelu")) == ()
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert rule(big, True, f32, layer) == ("cublaslt",)
    assert rule(big, True, f32, (*layer[:3], "gelu")) == ()


def test_unsupported_dtype_falls_back_to_reference() -> None:
    assert dispatch.choose("layer_norm", "cpu", torch.bfloat16) == "reference"
    assert dispatch.choose("linear", "cpu", torch.float16) == "reference"


def test_argument_is_strict() -> None:
    assert dispatch.choose("layer_norm", "cpu", torch.float32, "reference") == "reference"
    with pytest.raises(ValueError, match="cannot run on cpu"):
        dispatch.choose("layer_norm", "cpu", torch.float32, "cuda")
    with pytest.raises(ValueError, match="impl: expected one of"):
        dispatch.choose("layer_norm", "cpu", torch.float32, "fast")


def test_environment_forces_then_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_KERNEL_IMPL", "reference")
    assert dispatch.choose("linear", "cpu", torch.float32) == "reference"
    # The per-op variable wins over the global one.
    monkeypatch.setenv("CONVEYOR_LINEAR_IMPL", "cpp")
    assert dispatch.choose("linear", "cpu", torch.float32) == "cpp"
    assert dispatch.choose("layer_norm", "cpu", torch.float32) == "reference"
    # Known but unavailable here (no CUDA tensors): the defaults decide.
    monkeypatch.setenv("CONVEYOR_LINEAR_IMPL", "cuda")
    assert dispatch.choose("linear", "cpu", torch.float32) in ("cpp", "reference")
    monkeypatch.setenv("CONVEYOR_LINEAR_IMPL", "bogus")
    with pytest.raises(ValueError, match="CONVEYOR_LINEAR_IMPL"):
        dispatch.choose("linear", "cpu", torch.float32)


def test_environment_is_read_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # forced_by_env tests membership in os.environ's encoded mapping: a variable
    # set, emptied or deleted after a first call must count at once.
    monkeypatch.delenv("CONVEYOR_KERNEL_IMPL", raising=False)
    monkeypatch.delenv("CONVEYOR_LAYER_NORM_IMPL", raising=False)
    assert dispatch.forced_by_env("layer_norm") is None
    os.environ["CONVEYOR_KERNEL_IMPL"] = "reference"  # undone by the delenv above
    assert dispatch.forced_by_env("layer_norm") == ("CONVEYOR_KERNEL_IMPL", "reference")
    del os.environ["CONVEYOR_KERNEL_IMPL"]
    assert dispatch.forced_by_env("layer_norm") is None
    monkeypatch.setenv("CONVEYOR_KERNEL_IMPL", "cpp")
    assert dispatch.forced_by_env("layer_norm") == ("CONVEYOR_KERNEL_IMPL", "cpp")
    monkeypatch.setenv("CONVEYOR_LAYER_NORM_IMPL", "reference")
    assert dispatch.forced_by_env("layer_norm") == ("CONVEYOR_LAYER_NORM_IMPL", "reference")
    monkeypatch.setenv("CONVEYOR_LAYER_NORM_IMPL", "")  # empty: as unset
    assert dispatch.forced_by_env("layer_norm") == ("CONVEYOR_KERNEL_IMPL", "cpp")
    monkeypatch.delenv("CONVEYOR_KERNEL_IMPL")
    assert dispatch.forced_by_env("layer_norm") is None


def test_triton_on_cpu_only_in_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not dispatch.available("linear", "triton", "cpu", torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.available("linear", "triton", "cpu", torch.float32) == (
        dispatch.triton_installed()
    )
    # Never a CPU default, even when the interpreter could run it.
    assert dispatch.choose("linear", "cpu", torch.float32) != "triton"


def test_op_uses_the_forced_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    import conveyor.kernels.linear as linear

    original = linear._BACKENDS["cpp"]

    def spy(*args):
        calls.append("cpp")
        return original[0](*args)

    monkeypatch.setitem(linear._BACKENDS, "cpp", (spy, original[1]))
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    monkeypatch.setenv("CONVEYOR_LINEAR_IMPL", "reference")
    fused_linear(x, w)
    assert calls == []
    monkeypatch.setenv("CONVEYOR_LINEAR_IMPL", "cpp")
    fused_linear(x, w)
    assert calls == ["cpp"]


def test_unknown_op_raises() -> None:
    with pytest.raises(ValueError, match="op: expected"):
        dispatch.choose("conv", "cpu", torch.float32)


def test_kernels_import_without_triton_and_run_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Triton is optional at run time: importing the ops must not import it, and
    # with it reported missing every op still runs (default or reference).
    import subprocess
    import sys

    code = "import sys, conveyor.kernels; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    monkeypatch.setattr(dispatch, "triton_installed", lambda: False)
    monkeypatch.setenv("CONVEYOR_KERNEL_IMPL", "triton")
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    assert not dispatch.available("linear", "triton", "cpu", torch.float32)
    torch.testing.assert_close(fused_linear(x, w), x @ w.T)


@pytest.mark.parametrize(
    ("op", "work", "grad", "expected"),
    [
        ("linear", 1 << 40, False, "reference"),  # bfloat16: cuBLAS beat both of our GEMMs
        ("linear", 1 << 40, True, "reference"),
        ("embedding_bag", 1 << 20, False, "reference"),  # launch-bound: torch
        ("embedding_bag", 1 << 24, False, "cuda"),
        ("embedding_bag", 1 << 20, True, "cuda"),
        ("embedding_bag", 1 << 28, True, "triton"),
        ("layer_norm", 1 << 20, False, "reference"),
        ("layer_norm", 1 << 26, False, "triton"),
        ("layer_norm", 1 << 26, True, "reference"),
        ("histogram", 0, False, "cuda"),
        ("mlp", 1 << 20, False, "reference"),
    ],
)
def test_cuda_defaults_follow_the_measured_rules(monkeypatch, op, work, grad, expected) -> None:
    # Every implementation "available", as on a GPU machine with everything built.
    monkeypatch.setattr(dispatch, "available", lambda *args: True)
    for var in (dispatch.env_var(op), dispatch.ENV_ALL):
        monkeypatch.delenv(var, raising=False)
    assert dispatch.choose(op, "cuda", torch.bfloat16, work=work, grad=grad) == expected


def test_cuda_layer_norm_rows_wider_than_the_triton_kernel_go_to_cuda(monkeypatch) -> None:
    monkeypatch.setattr(dispatch, "available", lambda *args: True)
    for var in (dispatch.env_var("layer_norm"), dispatch.ENV_ALL):
        monkeypatch.delenv(var, raising=False)
    widest = dispatch.TRITON_LAYER_NORM_MAX_N
    for n, expected in ((widest, "triton"), (widest + 1, "cuda")):
        got = dispatch.choose("layer_norm", "cuda", torch.float32, work=1 << 26, detail=(n,))
        assert got == expected, n


@pytest.mark.skipif(not dispatch.triton_installed(), reason="triton not installed")
def test_dispatch_knows_the_triton_layer_norm_row_limit() -> None:
    from conveyor.kernels.triton_kernels.layer_norm import MAX_N

    assert dispatch.TRITON_LAYER_NORM_MAX_N == MAX_N


@pytest.mark.parametrize(
    ("work", "allow_tf32", "expected"),
    [(1 << 32, False, "triton"), (1 << 31, False, "reference"), (1 << 32, True, "reference")],
)
def test_cuda_float32_linear_is_triton_only_for_large_ieee_gemms(
    monkeypatch, work: int, allow_tf32: bool, expected: str
) -> None:
    # 3xTF32 beat torch's IEEE SGEMM from 2^32 multiply-adds; with TF32 allowed
    # torch's own TF32 GEMM is faster.
    monkeypatch.setattr(dispatch, "available", lambda *args: True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow_tf32)
    for var in (dispatch.env_var("linear"), dispatch.ENV_ALL):
        monkeypatch.delenv(var, raising=False)
    assert dispatch.choose("linear", "cuda", torch.float32, work=work) == expected


def test_cuda_default_falls_back_to_the_next_gpu_impl_then_reference(monkeypatch) -> None:
    monkeypatch.delenv(dispatch.ENV_ALL, raising=False)
    monkeypatch.delenv(dispatch.env_var("histogram"), raising=False)
    only_triton = lambda op, impl, device, dtype: impl in ("triton", "reference")  # noqa: E731
    monkeypatch.setattr(dispatch, "available", only_triton)
    assert dispatch.choose("histogram", "cuda", torch.float32) == "triton"
    monkeypatch.setattr(dispatch, "available", lambda op, impl, device, dtype: impl == "reference")
    assert dispatch.choose("histogram", "cuda", torch.float32) == "reference"
