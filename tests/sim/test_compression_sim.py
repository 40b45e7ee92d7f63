"""fl-sim with compressed updates trains, and its metrics count the compressed bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig


def run(tmp_path: Path, codec: str, **options: Any) -> list[dict[str, Any]]:
    out = tmp_path / codec
    config = SimConfig(
        clients=4,
        rounds=4,
        seed=1,
        threads=1,
        workers=0,
        learning_rate=0.5,
        task_options={"max_samples": 200},
        out=out,
        compression=codec,  # type: ignore[arg-type]
        **options,
    )
    assert simulate(config).outcome.finished
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run(tmp_path_factory.mktemp("sim"), "none")


@pytest.mark.parametrize(
    ("codec", "options", "most_bytes"),
    [("int8", {"per_channel": True}, 0.5), ("topk", {"topk_fraction": 0.1}, 0.35)],
)
def test_compressed_simulation_trains_and_sends_fewer_bytes(
    tmp_path: Path, plain: list[dict[str, Any]], codec: str, options: dict, most_bytes: float
) -> None:
    rows = run(tmp_path, codec, **options)
    assert rows[-1]["eval_accuracy"] > rows[0]["eval_accuracy"] + 0.1
    assert rows[-1]["eval_accuracy"] > plain[-1]["eval_accuracy"] - 0.15
    for mine, theirs in zip(rows[1:], plain[1:], strict=True):
        # The same model goes down (only the checksum's varint length may differ).
        assert abs(mine["bytes_down"] - theirs["bytes_down"]) <= 8 * len(mine["participants"])
        assert 0 < mine["bytes_up"] < most_bytes * theirs["bytes_up"]
