"""Resolve a task from a built-in name or ``package.module:Name`` and instantiate it.

Called only with a name the local operator chose (a client's policy, the server's job spec),
never with one that came from the network.
"""

from __future__ import annotations

import importlib
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
    return task_class


def load_task(spec: str, options: Mapping[str, Any] | None = None) -> Task:
    """Instantiate the task ``spec`` with ``options``; raise TaskLoadError with the reason."""
    task_class = resolve_task_class(spec)
    try:
        task = task_class(**dict(options or {}))
    except (TypeError, ValueError) as exc:
        raise TaskLoadError(f"task {spec!r} rejected its options: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskLoadError(
            f"task {spec!r} lacks build_model, load_data, train or evaluate "
            "(see fedsilo.tasks.interface)"
        )
    return task
