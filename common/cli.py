"""What both daemons' command lines share: flag parsing into config values, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from fedsilo.common.errors import FedsiloError
from fedsilo.common.logging import configure_logging
from fedsilo.common.settings import ConfigT, load_config


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (no usage dump) on a bad flag."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag_values(
    namespace: argparse.Namespace, exclude: Sequence[str] = ("config",)
) -> dict[str, Any]:
    """Return the flags the user actually gave (parsers use default=SUPPRESS)."""
    return {key: value for key, value in vars(namespace).items() if key not in exclude}


def add_switch(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """Add an on/off flag that, when absent, leaves the setting to env, file or default."""
    parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help)


INSECURE_HELP = "plaintext, no certificates: only on a network you trust"


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` (TOML or YAML holding the same settings as the flags)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML or YAML file with settings; flags and FEDSILO_* env win",
    )


def exit_process(code: int) -> NoReturn:
    """Flush stdio and end the process at once, skipping interpreter finalization.

    Everything a daemon writes (metrics, model, logs) is flushed and fsynced before this point.
    Finalizing the interpreter while grpc's C++ threads wind down occasionally ends in
    ``terminate called without an active exception`` (SIGABRT, seen about once in 20 client
    exits under load), which would turn a clean finish into exit code -6.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_daemon(
    prog: str,
    parser: argparse.ArgumentParser,
    model: type[ConfigT],
    run: Callable[[ConfigT], int],
    argv: Sequence[str] | None,
) -> int:
    """Parse flags into ``model`` (with env and --config), set up logging, return ``run``'s code."""
    args = parser.parse_args(argv)

    def body() -> int:
        config = load_config(model, flag_values(args), args.config)
        configure_logging(getattr(config, "log_level", "info"))
        return run(config)

    return run_cli(prog, body)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; turn a FedsiloError into one stderr line and its exit code."""
    try:
        return body()
    except FedsiloError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
