"""What both daemons' command lines share: flag parsing into config values, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fedsilo.common.errors import FedsiloError
from fedsilo.common.logging import configure_logging
from fedsilo.common.settings import ConfigT, load_config

# What a flag's value is parsed as, and the placeholder its help shows (str: the flag's name).
FLAG_TYPES: dict[type, str | None] = {int: "N", float: "X", str: None, Path: "PATH"}
FILE_ONLY_MARK = "config file"  # what the description of a setting without a flag must say


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


def flag_name(field: str) -> str:
    """Return the command-line flag of a field: ``learning_rate`` -> ``--learning-rate``."""
    return "--" + field.replace("_", "-")


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _help(field: FieldInfo) -> str:
    text = (field.description or "").rstrip(".")
    default = field.default
    if default is not PydanticUndefined and default is not None and not isinstance(default, bool):
        text += f" (default {default})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_field_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    field: FieldInfo,
    aliases: Sequence[str] = (),
) -> bool:
    """Add the flag of one field; return False (adding none) for a config-file-only field.

    Booleans become ``--x/--no-x``, a Literal gives choices, int/float/str/Path their type;
    anything else (tables) has no flag and its description must say it lives in the config
    file. Absent flags leave the setting to env, file or default (default=SUPPRESS).
    """
    flags = [flag_name(name), *aliases]
    kind = _without_none(field.annotation)
    common: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(field)}
    if kind is bool:
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
    elif get_origin(kind) is Literal:
        choices = get_args(kind)
        parser.add_argument(*flags, type=type(choices[0]), choices=choices, **common)
    elif kind in FLAG_TYPES:
        parser.add_argument(*flags, type=kind, metavar=FLAG_TYPES[kind], **common)
    elif FILE_ONLY_MARK in (field.description or ""):
        return False
    else:
        raise TypeError(f"{name}: no flag for {field.annotation}; say '{FILE_ONLY_MARK}' in it")
    return True


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    names: Iterable[str] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Add a flag for each field of ``model`` (or those in ``names``); return the file-only ones.

    The help of each flag is its field's description with the default; ``aliases`` adds more
    spellings (``{"learning_rate": ["--lr"]}``).
    """
    aliases = aliases or {}
    chosen = model.model_fields if names is None else list(names)
    file_only = []
    for name in chosen:
        if not add_field_flag(parser, name, model.model_fields[name], aliases.get(name, ())):
            file_only.append(name)
    return file_only


def file_only_epilog(names: Sequence[str]) -> str:
    """Return the help epilog that names the settings only a config file can hold."""
    return (
        f"Settings without a flag (in --config, or as JSON in FEDSILO_<NAME>): {', '.join(names)}."
        if names
        else ""
    )


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
    *,
    foreign: Collection[str] = (),
) -> int:
    """Parse flags into ``model`` (with env and --config), set up logging, return ``run``'s code.

    ``foreign``: settings of other fedsilo programs that may share the environment (an unknown
    FEDSILO_* variable named like one of them only warns, however close to one of ours).
    """
    args = parser.parse_args(argv)

    def warn(line: str) -> None:
        print(f"{prog}: warning: {line}", file=sys.stderr)

    def body() -> int:
        config = load_config(model, flag_values(args), args.config, warn=warn, foreign=foreign)
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
