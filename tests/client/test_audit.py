"""audit.jsonl: one strict JSON object per line, whatever the values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedsilo.client.audit import AuditLog


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


def _lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=_refuse_constant) for line in text.splitlines()]


def test_finite_values_are_written_as_they_are(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", "org-1")
    log.record("update_sent", round=3, norm=0.25, training={"lr": 0.1, "steps": [1, 2]})
    log.close()
    (row,) = _lines(tmp_path / "audit.jsonl")
    assert row["event"] == "update_sent" and row["client"] == "org-1" and "time" in row
    assert (row["round"], row["norm"], row["training"]) == (3, 0.25, {"lr": 0.1, "steps": [1, 2]})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_value_anywhere_becomes_a_string(tmp_path: Path, value: float) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", "org-1")
    log.record("model_received", durable=False, norm=value, nested={"loss": [1.0, value]})
    log.record("update_sent", round=1)
    log.close()
    first, second = _lines(tmp_path / "audit.jsonl")
    assert first["norm"] == str(value) and first["nested"] == {"loss": [1.0, str(value)]}
    assert second["round"] == 1
