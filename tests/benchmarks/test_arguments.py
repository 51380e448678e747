"""Bad arguments to the benchmark scripts: argparse's one-line error (exit 2) naming the flag and
the value, before anything slow starts (no server, no model, no timing)."""

from __future__ import annotations

import pytest

from tests.benchmarks.scripts import load

CASES = [
    # (script, argv, what the error line must say)
    ("drift_bench.py", ["--pairs", "0"], ["--pairs", "0"]),
    ("drift_bench.py", ["--duration", "0"], ["--duration", "0"]),
    ("drift_bench.py", ["--duration", "inf"], ["--duration", "inf"]),
    ("serve_bench.py", ["--points", "64"], ["--points", "'64'", "1x1,8x1,64x1,256x1,8x64"]),
    ("serve_bench.py", ["--points", "16x1"], ["--points", "'16x1'", "8x64"]),
    ("serve_bench.py", ["--points", "abc"], ["--points", "'abc'"]),
    # MLServer is measured at 1x1, 64x1 and 8x64 only.
    ("serve_bench.py", ["--servers", "mlserver", "--points", "8x1"], ["--points", "'8x1'", "64x1"]),
    ("serve_bench.py", ["--servers", "bogus"], ["--servers", "bogus", "conveyor-pin"]),
    ("serve_bench.py", ["--servers", "Bare"], ["--servers", "Bare", "bare"]),
    ("serve_bench.py", ["--servers", "mlserver", "--skip-mlserver"], ["--skip-mlserver"]),
    ("serve_bench.py", ["--duration", "0"], ["--duration", "0"]),
    ("serve_bench.py", ["--duration", "-1"], ["--duration", "-1"]),
    ("serve_bench.py", ["--duration", "inf"], ["--duration", "inf"]),
    ("serve_bench.py", ["--conveyor-delay", "-5"], ["--conveyor-delay", "-5"]),
    ("soak.py", ["--factor", "0"], ["--factor", "0"]),
    ("soak.py", ["--duration", "inf"], ["--duration", "inf"]),
    ("soak.py", ["--max-outstanding", "0"], ["--max-outstanding", "0"]),
    ("kernels/bench_ops.py", ["--rounds", "0"], ["--rounds", "0"]),
    ("kernels/bench_ops.py", ["--ops", "bogus"], ["--ops", "'bogus'", "layer_norm", "mlp"]),
    ("kernels/bench_ops.py", ["--threads", "0"], ["--threads", "0"]),
    ("kernels/bench_ops.py", ["--min-time", "0"], ["--min-time", "0"]),
    ("kernels/bench_ops.py", ["--min-time", "inf"], ["--min-time", "inf"]),
    ("kernels/bench_ops.py", ["--max-seconds", "nan"], ["--max-seconds", "nan"]),
    ("histogram_bench.py", ["--repeat", "0"], ["--repeat", "0"]),
    ("histogram_bench.py", ["--rows", "0"], ["--rows", "0"]),
    ("histogram_bench.py", ["--bins", "0"], ["--bins", "0", "2 edges"]),
    ("kernels/module_inference.py", ["--threads", "0"], ["--threads", "0"]),
    ("kernels/module_inference.py", ["--rounds", "0"], ["--rounds", "0"]),
    ("train_bench.py", ["--rounds", "0"], ["--rounds", "0"]),
    ("train_bench.py", ["--rows", "0"], ["--rows", "0"]),
]


def assert_usage_error(script: str, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Runs the script's main(argv); returns argparse's error line after checking exit 2."""
    module = load(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    # argparse's usage line, then "PROG: error: ..." (PROG is pytest's argv[0] here).
    assert err.strip().startswith("usage: ") and ": error: " in line, err
    return line


@pytest.mark.parametrize(("script", "argv", "said"), CASES, ids=lambda v: str(v))
def test_bad_value_is_a_usage_error(script, argv, said, capsys) -> None:
    line = assert_usage_error(script, argv, capsys)
    for text in said:
        assert text in line, line


def test_serve_bench_json_into_a_missing_folder(tmp_path, capsys) -> None:
    target = tmp_path / "missing" / "s.json"
    line = assert_usage_error("serve_bench.py", ["--json", str(target)], capsys)
    assert "--json" in line and str(target.parent) in line


def test_bench_ops_help_states_the_rounds_default(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load("kernels/bench_ops.py").main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--rounds ROUNDS timed batches per implementation, the fastest kept (default 5)" in (
        help_text
    )
