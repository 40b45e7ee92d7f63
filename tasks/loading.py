"""Resolve a task from a built-in name or ``package.module:Name`` and instantiate it.

Called only with a name the local operator chose (a client's policy, the server's job spec),
never with one that came from the network: a client without a task of its own resolves the
server's task name with ``resolve_builtin_task``, which knows only fedsilo's own modules.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from fedsilo.common.errors import TaskLoadError
from fedsilo.tasks.interface import Task

BUILTIN_TASKS: dict[str, str] = {
    "synthetic": "fedsilo.tasks.builtin.synthetic:SyntheticTask",
    "shakespeare": "fedsilo.tasks.builtin.shakespeare:ShakespeareTask",
    "fmnist": "fedsilo.tasks.builtin.fmnist:FashionMnistTask",
    "digits": "fedsilo.tasks.builtin.digits:DigitsTask",
}

# Options of built-in tasks that name places on the client's own disk: only the client's operator
# may set them, so a client that takes a built-in task's options from the server refuses these.
BUILTIN_LOCAL_OPTIONS: dict[str, frozenset[str]] = {"shakespeare": frozenset({"cache_dir"})}


def resolve_task_class(spec: str) -> type[Any]:
    """Resolve a built-in task name or ``package.module:Name`` to a class."""
    target = BUILTIN_TASKS.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(BUILTIN_TASKS))
        raise TaskLoadError(
            f"task {spec!r} is neither a built-in task ({known}) nor 'package.module:Name'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskLoadError(f"task {spec!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        task_class: type[Any] = getattr(module, attr)
    except AttributeError:
        raise TaskLoadError(f"task {spec!r}: module {module_name!r} has no {attr!r}") from None
    if not inspect.isclass(task_class):
        raise TaskLoadError(f"task {spec!r}: {attr!r} is not a class")
    return task_class


def resolve_builtin_task(name: str) -> type[Any]:
    """Resolve a built-in task name only; anything else (a dotted path) is refused unimported."""
    if name not in BUILTIN_TASKS:
        known = ", ".join(sorted(BUILTIN_TASKS))
        raise TaskLoadError(f"task {name[:100]!r} is not a built-in task ({known})")
    return resolve_task_class(name)


def check_task_options(task_class: type[Any], options: Mapping[str, Any], spec: str) -> None:
    """Raise TaskLoadError naming an option the task's constructor does not take, or lacks."""
    try:
        signature = inspect.signature(task_class)
    except (TypeError, ValueError):  # a constructor without a readable signature: take all
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return  # **options: the task checks its options itself
    named = {
        p.name: p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(set(options) - set(named))
    if unknown:
        takes = ", ".join(sorted(named)) or "no options"
        raise TaskLoadError(
            f"task {spec!r} rejected its options: no option {', '.join(map(repr, unknown))} "
            f"(it takes: {takes})"
        )
    missing = sorted(
        name for name, p in named.items() if p.default is p.empty and name not in options
    )
    if missing:
        raise TaskLoadError(
            f"task {spec!r} rejected its options: it needs {', '.join(map(repr, missing))}"
        )


def instantiate_task(task_class: type[Any], options: Mapping[str, Any], spec: str) -> Task:
    """Check ``options`` against the constructor, then build the task; TaskLoadError if bad."""
    check_task_options(task_class, options, spec)
    try:
        task = task_class(**dict(options))
    except (TypeError, ValueError) as exc:  # the task's own check of a value
        raise TaskLoadError(f"task {spec!r} rejected its options: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskLoadError(
            f"task {spec!r} lacks build_model, load_data, train or evaluate "
            "(see fedsilo.tasks.interface)"
        )
    return task


def load_task(spec: str, options: Mapping[str, Any] | None = None) -> Task:
    """Instantiate the task ``spec`` with ``options``; raise TaskLoadError with the reason."""
    return instantiate_task(resolve_task_class(spec), options or {}, spec)
