"""Load a program's frozen config from CLI flags, FEDSILO_* env vars and a config file.

Precedence, highest first: command-line flags, environment variables ``FEDSILO_<FIELD>``, the
config file (TOML or YAML; ``--config`` or ``FEDSILO_CONFIG``), field defaults. Each is a
pydantic-settings source and ``BaseSettings`` merges them; one model validates the result and a
bad value becomes one ConfigError line naming the field.

Unknown names are caught before validation: a config-file key that is no setting is an error
(with "did you mean" when one is close). A ``FEDSILO_*`` variable that is no setting of this
program is ignored when it is a setting of a fedsilo program this one knows shares its
environment (``foreign``), an error when it is a close match to one of its own (a typo), and
otherwise one warning line: fedsilo's programs share the prefix, and one environment may
configure several.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from fedsilo.common.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "FEDSILO_"
CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"
# FEDSILO_* variables that are read but are no program's setting: never warned about.
OTHER_VARIABLES = frozenset(
    {
        CONFIG_VARIABLE,
        ENV_PREFIX + "CACHE_DIR",  # the shakespeare dataset's cache (tasks/datasets/shakespeare.py)
    }
)
# difflib ratio above which an unknown variable is taken for a typo of a setting: one wrong
# letter in a five-letter name (0.8) and a swapped pair in "rondus" (0.83) are typos;
# fl-client's FEDSILO_CONNECT_TIMEOUT next to fl-server's join_timeout (0.74) is not.
TYPO_RATIO = 0.8
# Config-file keys are all checked (extra="forbid"): any near name is worth suggesting.
SUGGEST_RATIO = 0.6

ConfigT = TypeVar("ConfigT", bound=BaseModel)
Warn = Callable[[str], None]


class FedsiloSettings(BaseSettings):
    """Base of a program's config model: frozen, no unknown fields, loaded by load_config."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix=ENV_PREFIX)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read only the arguments when built in code; load_config brings env and file."""
        # A config built in code (tests, fl-sim's server config) must not change with the
        # environment of the process that happens to build it.
        return (init_settings,)


class EnvironSource(EnvSettingsSource):
    """pydantic-settings' env source over a given mapping (os.environ unless a test passes one)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=False, env_prefix=ENV_PREFIX)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._environ.items()}


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


def closest(name: str, candidates: Collection[str], cutoff: float) -> str | None:
    """Return the candidate most like ``name`` (difflib ratio >= cutoff), or None."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def check_file_keys(model: type[BaseModel], values: Mapping[str, Any], path: Path) -> None:
    """Raise ConfigError naming each config-file key that is no field, with the closest one."""
    problems = []
    for key in values:
        if key in model.model_fields:
            continue
        near = closest(key, model.model_fields, SUGGEST_RATIO)
        hint = f" (did you mean {near}?)" if near else ""
        problems.append(f"{key}: unknown setting in {path}{hint}")
    if problems:
        raise ConfigError("; ".join(problems))


def check_environment(
    model: type[BaseModel],
    environ: Mapping[str, str],
    warn: Warn,
    foreign: Collection[str] = (),
) -> None:
    """Refuse a FEDSILO_* typo of a setting; warn once about any other unknown FEDSILO_* name.

    ``foreign`` names the settings of other fedsilo programs this one knows may share its
    environment: ignored without a word, and never taken for a typo, however close.
    """
    fields = set(model.model_fields)
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_VARIABLES:
            continue
        name = upper.removeprefix(ENV_PREFIX).lower()
        if name in fields or name in foreign:
            continue
        near = closest(name, fields, TYPO_RATIO)
        if near is not None:
            raise ConfigError(f"{key}: not a setting (did you mean {ENV_PREFIX}{near.upper()}?)")
        warn(f"{key} is not a setting of this program; ignored")


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


def _print_warning(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def load_config(
    model: type[ConfigT],
    cli_values: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    warn: Warn = _print_warning,
    foreign: Collection[str] = (),
) -> ConfigT:
    """Validate flags > env > file > defaults as ``model``; raise ConfigError if anything is bad.

    ``cli_values`` holds the flags given (None means not given); ``environ`` defaults to
    os.environ, ``config_file`` to $FEDSILO_CONFIG.
    """
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(CONFIG_VARIABLE):
        config_file = Path(environ[CONFIG_VARIABLE])
    check_environment(model, environ, warn, foreign)
    file_values: dict[str, Any] = {}
    if config_file is not None:
        file_values = read_config_file(config_file)
        check_file_keys(model, file_values, config_file)
    flags = {key: value for key, value in cli_values.items() if value is not None}
    try:
        return _validate(model, flags, environ, file_values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
    except SettingsError as exc:  # e.g. FEDSILO_TASK_OPTIONS that is not JSON
        raise ConfigError(f"{exc}: {exc.__cause__}") from exc


def _validate(
    model: type[ConfigT],
    flags: dict[str, Any],
    environ: Mapping[str, str],
    file_values: dict[str, Any],
) -> ConfigT:
    # fl-client's ClientConfig is still a plain model: it takes the same sources.
    settings_cls = cast(type[BaseSettings], model)
    sources: tuple[PydanticBaseSettingsSource, ...] = (
        InitSettingsSource(settings_cls, init_kwargs=flags),
        EnvironSource(settings_cls, environ),
        InitSettingsSource(settings_cls, init_kwargs=file_values),
    )
    if issubclass(model, BaseSettings):
        return cast(ConfigT, model(_build_sources=(sources, flags)))
    merged: dict[str, Any] = {}
    for source in reversed(sources):
        merged.update(source())
    return model.model_validate(merged)
