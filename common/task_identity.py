"""A task's identity on the wire: its name, its options as canonical JSON, and their hash.

Both daemons call these functions, so the server's ``JobConfig`` and a client's local policy
describe a task the same way, byte for byte:

- options are a flat table of strings, integers, floats and booleans; the canonical JSON is
  ``json.dumps(options, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
  allow_nan=False)``, so ``32`` stays an integer and ``32.0`` stays a float;
- the hash is the lowercase hex SHA-256 of ``name`` (UTF-8), one zero byte, then the canonical
  JSON (ASCII).

The hash binds the name and the options together; a client compares it with the hash of its
own policy before anything is imported (docs/protocol.md, "Task identity").
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OptionValue = str | int | float | bool
TaskOptions = Mapping[str, OptionValue]

# A JobConfig's options text above this is refused unread: no task takes 64 KiB of options.
MAX_OPTIONS_JSON = 64 << 10
_SHOWN = 60  # characters of one option value quoted in a refusal


class TaskIdentityError(ValueError):
    """Options that cannot be part of a task identity (wrong type, not canonical, bad hash)."""


def check_options(options: Mapping[str, Any]) -> dict[str, OptionValue]:
    """Return ``options`` as a plain dict; raise TaskIdentityError naming a bad value."""
    checked: dict[str, OptionValue] = {}
    for key, value in options.items():
        if not isinstance(key, str) or not key:
            raise TaskIdentityError(f"task option name {key!r} is not a non-empty string")
        if isinstance(value, float) and not math.isfinite(value):
            raise TaskIdentityError(f"task option {key!r} is {value!r}; options must be finite")
        if not isinstance(value, (str, int, float, bool)):
            raise TaskIdentityError(
                f"task option {key!r} is a {type(value).__name__}; options are strings, "
                "integers, floats or booleans"
            )
        checked[key] = value
    return checked


def canonical_options(options: Mapping[str, Any]) -> str:
    """Return the canonical JSON text of a task's options (sorted keys, compact, typed)."""
    return json.dumps(
        check_options(options),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )


def task_hash(name: str, options_json: str) -> str:
    """Return the hex SHA-256 of ``name``, a zero byte and the canonical options JSON."""
    digest = hashlib.sha256()
    digest.update(name.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(options_json.encode("ascii"))
    return digest.hexdigest()


@dataclass(frozen=True)
class TaskIdentity:
    """What identifies a task in a job: name, canonical options JSON and their hash."""

    name: str
    options_json: str
    hash: str

    @classmethod
    def of(cls, name: str, options: Mapping[str, Any]) -> TaskIdentity:
        """Return the identity of task ``name`` with ``options``."""
        options_json = canonical_options(options)
        return cls(name, options_json, task_hash(name, options_json))

    @classmethod
    def from_wire(cls, name: str, options_json: str, claimed_hash: str) -> TaskIdentity:
        """Check an identity received from a peer; raise TaskIdentityError saying what is wrong."""
        if len(options_json) > MAX_OPTIONS_JSON:
            raise TaskIdentityError(
                f"task options are {len(options_json)} characters, at most {MAX_OPTIONS_JSON}"
            )
        options = parse_options(options_json)
        if canonical_options(options) != options_json:
            raise TaskIdentityError("task options are not in canonical JSON form")
        if task_hash(name, options_json) != claimed_hash:
            raise TaskIdentityError("task hash does not match the task's name and options")
        return cls(name, options_json, claimed_hash)

    @property
    def options(self) -> dict[str, OptionValue]:
        """The options as values (integers stay integers)."""
        return parse_options(self.options_json)

    def describe(self) -> str:
        """Return ``name {options}`` for one line of a log or a refusal."""
        return f"{self.name!r} {self.options_json}"


def parse_options(options_json: str) -> dict[str, OptionValue]:
    """Parse options JSON into a flat table; raise TaskIdentityError if it is anything else."""
    try:
        value = json.loads(options_json, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise TaskIdentityError(f"task options are not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TaskIdentityError("task options must be a JSON object")
    return check_options(value)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def describe_difference(theirs: TaskIdentity, ours: TaskIdentity) -> str:
    """Return one line naming how the server's task differs from this client's."""
    if theirs.name != ours.name:
        return f"the server asks for task {_shown(theirs.name)}, this client runs {ours.name!r}"
    mine, other = ours.options, theirs.options
    parts = [f"{key!r} (only the server's)" for key in sorted(set(other) - set(mine))]
    parts += [f"{key!r} (missing from the server's)" for key in sorted(set(mine) - set(other))]
    parts += [
        f"{key!r}: the server's {_shown(other[key])}, this client's {mine[key]!r}"
        for key in sorted(set(mine) & set(other))
        if json.dumps(mine[key]) != json.dumps(other[key])
    ]
    more = f" and {len(parts) - 5} more" if len(parts) > 5 else ""
    return f"task {ours.name!r} options differ: " + "; ".join(parts[:5]) + more


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
