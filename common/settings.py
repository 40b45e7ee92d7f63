"""Load a component's frozen pydantic config from a file, FEDSILO_* env vars and CLI flags.

Precedence, lowest first: field defaults, the config file (TOML or YAML), environment variables
``FEDSILO_<FIELD>``, command-line flags. Whatever the source, one model validates the result and
a bad value becomes one ConfigError line naming the field.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fedsilo.common.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "FEDSILO_"

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file holding one table of field values."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def env_values(model: type[BaseModel], environ: Mapping[str, str]) -> dict[str, str]:
    """Pick the FEDSILO_<FIELD> variables that name a field of ``model``."""
    values = {}
    for field in model.model_fields:
        key = ENV_PREFIX + field.upper()
        if key in environ:
            values[field] = environ[key]
    return values


def describe_validation_error(exc: ValidationError) -> str:
    """Turn a pydantic error into one line: ``field: problem (got value)``, joined by '; '."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        if not error["loc"]:  # a check across fields: its message names the field itself
            problems.append(message)
            continue
        field = ".".join(str(part) for part in error["loc"])
        got = error.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        problems.append(f"{field}: {message}{shown}")
    return "; ".join(problems)


def load_config(
    model: type[ConfigT],
    cli_values: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConfigT:
    """Merge file < env < CLI values and validate them as ``model``; raise ConfigError if bad."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(read_config_file(config_file))
    merged.update(env_values(model, environ))
    merged.update({key: value for key, value in cli_values.items() if value is not None})
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
