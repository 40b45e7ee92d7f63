"""Task loading: options are checked against the constructor's signature, by name."""

from __future__ import annotations

import sys

import pytest

from fedsilo.common.errors import TaskLoadError
from fedsilo.tasks.loading import check_task_options, load_task, resolve_builtin_task


class Strict:
    def __init__(self, width: int, depth: int = 2) -> None:
        self.width, self.depth = width, depth


class Open:
    def __init__(self, **options: object) -> None:
        self.options = options


def test_an_unknown_option_is_named_with_the_ones_the_task_takes() -> None:
    with pytest.raises(TaskLoadError) as raised:
        check_task_options(Strict, {"width": 1, "args": ["touch"]}, "Strict")
    assert str(raised.value) == (
        "task 'Strict' rejected its options: no option 'args' (it takes: depth, width)"
    )


def test_a_missing_required_option_is_named() -> None:
    with pytest.raises(TaskLoadError, match="it needs 'width'"):
        check_task_options(Strict, {"depth": 3}, "Strict")


def test_a_task_taking_any_options_checks_them_itself() -> None:
    check_task_options(Open, {"anything": 1}, "Open")


def test_a_builtin_task_with_an_unknown_option_never_reaches_its_constructor() -> None:
    with pytest.raises(TaskLoadError, match="no option 'hidden'"):
        load_task("synthetic", {"hidden": 32})


def test_only_built_in_names_resolve_without_a_local_choice() -> None:
    assert resolve_builtin_task("digits").__name__ == "DigitsTask"
    sys.modules.pop("tests.integration.import_canary", None)
    with pytest.raises(TaskLoadError, match="not a built-in task"):
        resolve_builtin_task("tests.integration.import_canary:Task")
    assert "tests.integration.import_canary" not in sys.modules  # never imported
