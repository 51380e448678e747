"""Bad arguments to the benchmark scripts: argparse's one-line error (exit 2) naming the flag and
the value, before anything slow starts (no server, no model, no timing)."""

from __future__ import annotations

import pytest

from tests.benchmarks.scripts import load

CASES = [
    # (script, argv, what the error line must say)
    ("drift_bench.py", ["--pairs", "0"], ["--pairs", "0"]),
    ("drift_bench.py", ["--duration", "0"], ["--duration", "0"]),
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
