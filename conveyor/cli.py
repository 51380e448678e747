"""The ``conveyor`` command: one entry point, one subcommand per stage.

Each subcommand lives beside the code it drives and registers itself through
:func:`add_command`; options resolve as flags > ``CONVEYOR_*`` environment >
``--config`` TOML file > defaults (see :mod:`conveyor.config`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from conveyor import __version__, config
from conveyor.errors import ConveyorError
from conveyor.log import LEVELS, setup_logging

# Modules that define `register(subparsers, common)`. Keep them light at import
# time (no torch, no pyarrow at module level) so `conveyor --help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "conveyor.info",
    "conveyor.ingest.cli",
    "conveyor.trainer.cli",
    "conveyor.engine.cli",
    "conveyor.bench.command",
    "conveyor.demo.command",
)

log = logging.getLogger("conveyor.cli")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--config", metavar="FILE", help="TOML config file (default: $CONVEYOR_CONFIG if set)"
    )
    group.add_argument("--log-level", default="info", choices=LEVELS, help="default: info")
    group.add_argument(
        "--log-format", default="text", choices=("text", "json"), help="default: text"
    )
    return common


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    parents: Sequence[argparse.ArgumentParser] = (),
    run: Callable[[argparse.Namespace], int | None] | None = None,
    path: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """Add a subcommand; ``run`` is called with the resolved options when it is chosen.

    ``path`` is the chain of parent commands for nested ones (``("ingest",)``
    for ``conveyor ingest profile``), used to find its table in config files.
    """
    parser = subparsers.add_parser(
        name, help=help, description=help, parents=list(parents) if run else []
    )
    parser.set_defaults(_command_path=(*path, name))
    if run is not None:
        parser.set_defaults(_run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="conveyor: ingest -> train -> model repository -> serve -> metrics.",
    )
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    common = _common_options()
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers, common)
    config.prepare(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = config.resolve(parser, argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return int(args._run(args) or 0)
    except ConveyorError as exc:
        print(f"conveyor: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
