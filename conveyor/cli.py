"""The ``conveyor`` command: one entry point, one subcommand per stage.

Each subcommand lives beside the code it drives and registers itself through
:func:`add_command`; options resolve as flags > ``CONVEYOR_*`` environment >
``--config`` TOML file > defaults (see :mod:`conveyor.config`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import sys
from collections.abc import Callable, Sequence

from conveyor import __version__, config
from conveyor.errors import ConveyorError
from conveyor.log import LEVELS, setup_logging
from conveyor.standard_streams import open_standard_streams

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

# Exit status when the reader of stdout went away (``conveyor info | head -3``): 128 + SIGPIPE,
# what a shell reports for a command the signal ended, so ``set -o pipefail`` sees it.
SIGPIPE_EXIT = 141


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


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reading end is closed (poll reports POLLERR), so a
    BrokenPipeError from anything else (a socket, a child's stdin) is not mistaken for it."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (captured), no poll
        return False


def _stdout_closed() -> int:
    """End quietly after a write to a closed pipe, as the Python docs recommend (signal docs,
    "Note on SIGPIPE"): point stdout at /dev/null so the interpreter's own flush at exit
    does not raise again, and return :data:`SIGPIPE_EXIT`."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return SIGPIPE_EXIT


def main(argv: Sequence[str] | None = None) -> int:
    open_standard_streams()  # before anything opens a descriptor that could take 0-2
    parser = build_parser()
    args = config.resolve(parser, argv)
    setup_logging(args.log_level, args.log_format)
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        return _stdout_closed()
    except ConveyorError as exc:
        print(f"conveyor: error: {config.name_source(str(exc), args)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
