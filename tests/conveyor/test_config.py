"""Layered options: flags > CONVEYOR_* environment > TOML config file > defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from conveyor import config


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    sub = parser.add_subparsers(required=True)
    serve = sub.add_parser("serve")
    serve.set_defaults(_command_path=("serve",))
    serve.add_argument("--config")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--model-control", choices=("poll", "explicit"), default="poll")
    serve.add_argument("--json-logs", action="store_true")
    serve.add_argument("--preferred-batch-size", type=int, nargs="+", default=[8])
    serve.add_argument("--drift-threshold", type=float, default=0.2)
    serve.add_argument("--workers", type=_positive, default=1)
    group = sub.add_parser("ingest")
    leaves = group.add_subparsers(required=True)
    profile = leaves.add_parser("profile")
    profile.set_defaults(_command_path=("ingest", "profile"))
    profile.add_argument("source")
    profile.add_argument("--config")
    profile.add_argument("--bins", type=int, default=20)
    profile.add_argument("--port", type=int, default=1)
    config.prepare(parser)
    return parser


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conveyor.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set() -> None:
    args = config.resolve(_parser(), ["serve"], environ={})
    assert (args.port, args.host, args.model_control, args.json_logs) == (
        8001,
        "127.0.0.1",
        "poll",
        False,
    )
    assert args.preferred_batch_size == [8]


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    cfg = _write(tmp_path, 'port = 7000\nhost = "file-host"\n[serve]\nport = 7100\n')
    env = {"CONVEYOR_PORT": "7200", "CONVEYOR_CONFIG": str(cfg)}
    args = config.resolve(_parser(), ["serve", "--port", "7300"], environ=env)
    assert args.port == 7300
    args = config.resolve(_parser(), ["serve"], environ=env)
    assert args.port == 7200 and args.host == "file-host"
    args = config.resolve(_parser(), ["serve"], environ={"CONVEYOR_CONFIG": str(cfg)})
    assert args.port == 7100  # the [serve] table wins over the top level


def test_a_commands_error_about_a_flag_names_where_its_value_came_from(tmp_path: Path) -> None:
    # The commands check ranges after parsing, naming the flag: a value from the config
    # file or the environment was reported as if typed on the command line.
    cfg = _write(tmp_path, "[serve]\ndrift-threshold = 0\n")
    message = "--drift-threshold must be > 0, got 0.0"
    args = config.resolve(_parser(), ["serve", "--config", str(cfg)], environ={})
    assert config.name_source(message, args) == (
        f"{message} (the value of config file {cfg}, key 'serve.drift-threshold')"
    )
    args = config.resolve(_parser(), ["serve"], environ={"CONVEYOR_PORT": "0"})
    assert config.name_source("--port must be 1..65535", args) == (
        "--port must be 1..65535 (the value of environment variable CONVEYOR_PORT)"
    )
    assert config.name_source("--ports are odd", args) == "--ports are odd"  # another flag
    args = config.resolve(_parser(), ["serve", "--port", "0"], environ={})
    assert config.name_source("--port must be 1..65535", args) == "--port must be 1..65535"


def test_nested_command_table_and_dashed_keys(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "[ingest.profile]\nbins = 10\n[serve]\nmodel-control = 'explicit'\n")
    args = config.resolve(_parser(), ["ingest", "profile", "data/", "--config", str(cfg)], {})
    assert args.bins == 10 and args.port == 1 and args.source == "data/"
    args = config.resolve(_parser(), ["serve", "--config", str(cfg)], {})
    assert args.model_control == "explicit"


def test_env_booleans_and_lists() -> None:
    env = {"CONVEYOR_JSON_LOGS": "yes", "CONVEYOR_PREFERRED_BATCH_SIZE": "4,16 32"}
    args = config.resolve(_parser(), ["serve"], environ=env)
    assert args.json_logs is True and args.preferred_batch_size == [4, 16, 32]
    args = config.resolve(_parser(), ["serve"], environ={"CONVEYOR_JSON_LOGS": "off"})
    assert args.json_logs is False


def test_file_lists_and_booleans(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "[serve]\njson_logs = true\npreferred_batch_size = [2, 4]\n")
    args = config.resolve(_parser(), ["serve", "--config", str(cfg)], environ={})
    assert args.json_logs is True and args.preferred_batch_size == [2, 4]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONVEYOR_PORT": "eighty"}, "environment variable CONVEYOR_PORT: invalid value 'eighty'"),
        ({"CONVEYOR_MODEL_CONTROL": "sometimes"}, "CONVEYOR_MODEL_CONTROL: invalid choice"),
        ({"CONVEYOR_JSON_LOGS": "maybe"}, "CONVEYOR_JSON_LOGS: expected a boolean"),
    ],
)
def test_bad_env_value_names_the_variable(
    env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        config.resolve(_parser(), ["serve"], environ=env)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[serve]\nprot = 1\n", "unknown key 'serve.prot'"),
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("[serve]\nport = 'x'\n", "key 'serve.port': invalid value 'x'"),
        ("[serve]\nport = [1, 2]\n", "expected a single value"),
        ("port = \n", "not valid TOML"),
        # bool is an int in Python and int() truncates: neither may pass as a number
        ("[serve]\nport = true\n", "key 'serve.port': expected a number, got a boolean"),
        ("[serve]\nport = 8001.9\n", "key 'serve.port': expected an integer, got 8001.9"),
        ("[serve]\ndrift-threshold = true\n", "key 'serve.drift-threshold': expected a number"),
        ("[serve]\nworkers = true\n", "key 'serve.workers': expected a number, got a boolean"),
        ("[serve]\nworkers = 0\n", "key 'serve.workers': invalid value '0': must be at least 1"),
        ("[serve]\nworkers = 2.5\n", "key 'serve.workers': invalid value '2.5'"),
        # a text option takes an integer as its text; other TOML types are mistakes
        ("[serve]\nhost = true\n", "key 'serve.host': expected a string, got True"),
        ("[serve]\nhost = 1.5\n", "key 'serve.host': expected a string, got 1.5"),
    ],
)
def test_bad_config_file_names_file_and_key(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _write(tmp_path, text)
    with pytest.raises(SystemExit):
        config.resolve(_parser(), ["serve", "--config", str(cfg)], environ={})
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err


def test_file_numbers_convert_like_flags(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "[serve]\nport = 9000\ndrift-threshold = 1\nworkers = 3\n")
    args = config.resolve(_parser(), ["serve", "--config", str(cfg)], environ={})
    assert (args.port, args.workers) == (9000, 3)
    assert args.drift_threshold == 1.0 and isinstance(args.drift_threshold, float)
    text = _write(tmp_path, "[serve]\nhost = 2024\n")
    assert config.resolve(_parser(), ["serve", "--config", str(text)], environ={}).host == "2024"


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.resolve(_parser(), ["serve", "--config", str(tmp_path / "nope.toml")], environ={})
    assert "nope.toml: not found" in capsys.readouterr().err


def _required_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    sub = parser.add_subparsers(required=True)
    train = sub.add_parser("train")
    train.set_defaults(_command_path=("train",))
    train.add_argument("--config")
    train.add_argument("--label", required=True)
    config.prepare(parser)
    return parser


def test_required_option_may_come_from_env_or_file(tmp_path: Path) -> None:
    args = config.resolve(_required_parser(), ["train"], environ={"CONVEYOR_LABEL": "y"})
    assert args.label == "y"
    cfg = _write(tmp_path, "[train]\nlabel = 'z'\n")
    assert config.resolve(_required_parser(), ["train", "--config", str(cfg)], {}).label == "z"


def test_required_option_missing_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        config.resolve(_required_parser(), ["train"], environ={})
    assert exc.value.code == 2
    assert "required: --label (or environment variable CONVEYOR_LABEL" in capsys.readouterr().err


def test_errors_after_parsing_show_the_subcommands_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Missing required options and bad environment or file values are found after argparse
    # is done; they used to be reported with the top-level usage ("usage: t [-h] ...").
    with pytest.raises(SystemExit):
        config.resolve(_required_parser(), ["train"], environ={})
    err = capsys.readouterr().err
    assert err.startswith("usage: t train [-h]") and "\nt train: error: " in err
    with pytest.raises(SystemExit):
        config.resolve(_parser(), ["ingest", "profile", "d/"], environ={"CONVEYOR_BINS": "x"})
    err = capsys.readouterr().err
    assert err.startswith("usage: t ingest profile [-h]")
    assert "t ingest profile: error: environment variable CONVEYOR_BINS" in err
