"""Layered command-line configuration: flags > ``CONVEYOR_*`` environment > config file > defaults.

Every option of every subcommand can be set three ways besides its default:

* the flag itself (``--port 9000``), which always wins;
* an environment variable named after the option: ``CONVEYOR_`` plus the
  option's name in upper case with ``-`` as ``_`` (``CONVEYOR_PORT=9000``);
* a TOML config file given by ``--config FILE`` or ``CONVEYOR_CONFIG``. Keys at
  the top level apply to every subcommand that has that option; a table named
  after a subcommand (``[serve]``, ``[ingest.profile]``) applies to it alone and
  wins over the top level. Keys may be written with ``-`` or ``_``.

Environment and file values go through the same type conversion and choice
checks as flags, and a bad one is an error naming the variable, or the file
and key, rather than a silent fallback. Unknown keys in a config file are
errors too, so a typo cannot go unnoticed.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CONVEYOR_"
CONFIG_ENV = "CONVEYOR_CONFIG"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class _Unset:
    """Wraps an option's default, so options given on the command line can be told apart."""

    __slots__ = ("default", "required")

    def __init__(self, default: Any) -> None:
        self.default = default
        self.required = False

    def __repr__(self) -> str:
        return repr(self.default)


class _ExtendFromUnset(argparse._ExtendAction):
    """argparse's ``extend`` (a repeatable list option) whose first occurrence starts a
    new list instead of extending the marked default, which is no list."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        if isinstance(getattr(namespace, self.dest, None), _Unset):
            setattr(namespace, self.dest, None)
        super().__call__(parser, namespace, values, option_string)


class ConfigError(ValueError):
    """A config file or environment value that cannot be used; the message names its source."""


@dataclass
class _Command:
    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    options: dict[str, argparse.Action] = field(default_factory=dict)


def env_name(dest: str) -> str:
    """The variable for an option: ``model_repository`` -> ``CONVEYOR_MODEL_REPOSITORY``."""
    return ENV_PREFIX + dest.upper()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[_Command]:
    children = _subparsers(parser)
    if not children:
        options = {
            a.dest: a
            for a in parser._actions
            if a.option_strings
            and a.dest not in ("help", "version", "config")
            and a.default is not argparse.SUPPRESS
        }
        return [_Command(path, parser, options)]
    found: list[_Command] = []
    for name, child in children.items():
        found.extend(_commands(child, (*path, name)))
    return found


def _convert(action: argparse.Action, raw: Any, where: str) -> Any:
    """Convert an environment string or a TOML value as argparse would convert the flag."""
    if action.nargs == 0:  # store_true / store_false / store_const
        if isinstance(raw, bool):
            flag = raw
        elif isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            flag = raw.strip().lower() in _TRUE
        else:
            raise ConfigError(f"{where}: expected a boolean (true/false), got {raw!r}")
        return action.const if flag else action.default.default
    many = action.nargs in ("*", "+") or isinstance(action.nargs, int)
    if many:
        items = raw if isinstance(raw, list) else [p for p in str(raw).replace(",", " ").split()]
        return [_convert_one(action, item, where) for item in items]
    if isinstance(raw, (list, dict)):
        raise ConfigError(f"{where}: expected a single value, got {raw!r}")
    return _convert_one(action, raw, where)


def _convert_one(action: argparse.Action, raw: Any, where: str) -> Any:
    if isinstance(raw, str):
        value = _apply_type(action, raw, where) if action.type is not None else raw
    elif action.type is None or action.type is str:
        # A text option: an integer reads as the flag's text would ("2" for version 2);
        # anything else (a boolean, a float, a date) is more likely a mistake.
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{where}: expected a string, got {raw!r}")
        value = str(raw)
    else:
        value = _typed_scalar(action, raw, where)
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: invalid choice {raw!r} (choose from {choices})")
    return value


def _apply_type(action: argparse.Action, text: str, where: str) -> Any:
    try:
        return action.type(text)  # type: ignore[misc]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{where}: invalid value {text!r}: {exc}") from None


def _typed_scalar(action: argparse.Action, raw: Any, where: str) -> Any:
    """A TOML number for an option with a type, checked as strictly as the flag's text would be.

    TOML's bool is a subclass of int in Python, and ``int(8001.9)`` truncates, so
    neither may reach the option's type unchecked.
    """
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: expected a number, got a boolean ({str(raw).lower()})")
    if not isinstance(raw, (int, float)):
        raise ConfigError(f"{where}: invalid value {raw!r}")
    if action.type is int:
        if not isinstance(raw, int):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        return raw
    if action.type is float:
        return float(raw)
    # Another converter (a range-checked int, a policy name): give it the text the flag would.
    return _apply_type(action, str(raw), where)


def _load_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from None


def _check_keys(
    table: Mapping[str, Any], path: tuple[str, ...], commands: list[_Command], file: Path
) -> None:
    under = [c for c in commands if c.path[: len(path)] == path]
    known = {d for c in under for d in c.options}
    children = {c.path[len(path)] for c in under if len(c.path) > len(path)}
    for key, value in table.items():
        norm = key.replace("-", "_")
        if key in children and isinstance(value, dict):
            _check_keys(value, (*path, key), commands, file)
        elif norm not in known:
            where = ".".join((*path, key))
            raise ConfigError(f"config file {file}: unknown key {where!r}")


def _file_values(table: Mapping[str, Any], command: _Command) -> dict[str, tuple[Any, str]]:
    """Values for the active command, most specific table last so it wins."""
    values: dict[str, tuple[Any, str]] = {}
    node: Any = table
    prefix: tuple[str, ...] = ()
    for depth in range(len(command.path) + 1):
        if depth:
            name = command.path[depth - 1]
            node = node.get(name) if isinstance(node, dict) else None
            prefix = (*prefix, name)
            if not isinstance(node, dict):
                break
        for key, value in node.items():
            norm = key.replace("-", "_")
            if norm in command.options and not isinstance(value, dict):
                values[norm] = (value, ".".join((*prefix, key)))
    return values


def prepare(parser: argparse.ArgumentParser) -> None:
    """Mark every option's default so :func:`resolve` can see which were given as flags.

    Required options stop being required at parse time, so the environment or
    the config file can supply them; :func:`resolve` enforces them afterwards.
    """
    for command in _commands(parser):
        for action in command.options.values():
            if not isinstance(action.default, _Unset):
                action.default = _Unset(action.default)
            if type(action) is argparse._ExtendAction:
                action.__class__ = _ExtendFromUnset
            if action.required:
                action.required = False
                action.default.required = True  # type: ignore[attr-defined]


def resolve(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` and fill each option not given as a flag from the environment, then the file.

    The parser must have been passed through :func:`prepare`. A ``--config``
    option on the parser (or ``CONVEYOR_CONFIG``) names the TOML file. Errors
    exit through the chosen subcommand's ``error`` with status 2, like a bad flag, so
    they show that subcommand's usage (``conveyor ingest profile ...``), not the top level's.
    """
    environ = os.environ if environ is None else environ
    args = parser.parse_args(argv)
    commands = _commands(parser)
    path = tuple(getattr(args, "_command_path", ()))
    active = next((c for c in commands if c.path == path), None)
    if active is None:
        return args

    config_path = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    file_values: dict[str, tuple[Any, str]] = {}
    try:
        if config_path:
            file = Path(config_path)
            table = _load_file(file)
            _check_keys(table, (), commands, file)
            file_values = {
                dest: (value, f"config file {file}, key {key!r}")
                for dest, (value, key) in _file_values(table, active).items()
            }
        sources: dict[str, str] = {}
        for dest, action in active.options.items():
            current = getattr(args, dest, None)
            if not isinstance(current, _Unset):
                continue
            name = env_name(dest)
            if name in environ:
                value = _convert(action, environ[name], f"environment variable {name}")
                sources[action.option_strings[-1]] = f"environment variable {name}"
            elif dest in file_values:
                raw, where = file_values[dest]
                value = _convert(action, raw, where)
                sources[action.option_strings[-1]] = where
            elif current.required:
                flag = "/".join(action.option_strings)
                raise ConfigError(
                    f"the following arguments are required: {flag} "
                    f"(or environment variable {name}, or config key {dest!r})"
                )
            else:
                value = current.default
            setattr(args, dest, value)
        # Where each flag's value came from when not the command line, for errors the
        # commands raise later naming the flag (see :func:`name_source`).
        args._config_sources = sources
    except ConfigError as exc:
        active.parser.error(str(exc))
    return args


def name_source(message: str, args: argparse.Namespace) -> str:
    """``message`` (a command's error naming a flag first: ``--epochs must be >= 1``) with
    where that flag's value came from, when it came from the environment or the config
    file: ``... (the value of config file t.toml, key 'train.epochs')``."""
    for flag, where in getattr(args, "_config_sources", {}).items():
        after = message[len(flag) : len(flag) + 1]  # not a longer flag: --epochs-x
        if message.startswith(flag) and not (after and (after.isalnum() or after in "-_")):
            return f"{message} (the value of {where})"
    return message
