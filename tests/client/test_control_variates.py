"""A client's SCAFFOLD control variate: option II by hand, and its store across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from fedsilo.client.control_variates import (
    KEEP,
    ControlVariateStore,
    correction,
    next_variate,
)
from fedsilo.common.errors import ConfigError
from fedsilo.common.specs import TensorSpec

SPECS = [TensorSpec("w", torch.float32, (2,)), TensorSpec("bn.mean", torch.float32, (1,))]


def variate(w: tuple[float, float], mean: float = 0.0) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(w), "bn.mean": torch.tensor([mean])}


def test_option_two_by_hand() -> None:
    # c_i = [0.1, 0], c = [0.3, 0.2], x = [1, 1], y_i = [0.5, 1.25], K = 5, lr = 0.1:
    # c_i+ = c_i - c + (x - y_i) / (K lr) = [0.1 - 0.3 + 1, 0 - 0.2 - 0.5] = [0.8, -0.7].
    own, server = variate((0.1, 0.0), 0.5), variate((0.3, 0.2), 9.0)
    start, trained = variate((1.0, 1.0), 0.0), variate((0.5, 1.25), 7.0)
    new, delta = next_variate(
        own, server, start, trained, steps=5, learning_rate=0.1, parameters={"w"}
    )
    assert_close(new["w"], torch.tensor([0.8, -0.7]))
    assert_close(delta["w"], torch.tensor([0.7, -0.7]))
    # A buffer has no gradient: its variate stays, its change is 0.
    assert_close(new["bn.mean"], torch.tensor([0.5])) and float(delta["bn.mean"]) == 0.0
    assert_close(correction(server, own)["w"], torch.tensor([0.2, 0.2]))


def test_the_store_gives_each_round_the_newest_variate_from_before_it(tmp_path: Path) -> None:
    store = ControlVariateStore(SPECS, tmp_path / "cv")
    assert_close(store.for_round(1), variate((0.0, 0.0)))  # zero before round 1
    store.save(1, variate((1.0, 2.0)))
    store.save(2, variate((3.0, 4.0)))
    # A restarted client (a new store on the same folder) reads what the old one wrote.
    again = ControlVariateStore(SPECS, tmp_path / "cv")
    assert_close(again.for_round(3), variate((3.0, 4.0)))
    # A server resumed from round 1's checkpoint replays round 2: it gets round 1's variate,
    # and the replayed round's save drops the version the first run made.
    assert_close(again.for_round(2), variate((1.0, 2.0)))
    again.save(2, variate((5.0, 6.0)))
    assert again.rounds() == [1, 2]
    assert_close(again.for_round(3), variate((5.0, 6.0)))
    # A fresh job's round 1 finds the files of an older one: they go.
    again.save(1, variate((7.0, 7.0)))
    assert again.rounds() == [1]


def test_the_store_keeps_the_newest_versions_only(tmp_path: Path) -> None:
    store = ControlVariateStore(SPECS, tmp_path)
    for number in range(1, KEEP + 4):
        store.save(number, variate((float(number), 0.0)))
    assert store.rounds() == list(range(4, KEEP + 4))
    memory = ControlVariateStore(SPECS, None)
    memory.save(1, variate((1.0, 1.0)))
    assert_close(memory.for_round(2), variate((1.0, 1.0)))
    assert list(tmp_path.glob("*.tmp")) == []


def test_a_damaged_or_foreign_file_is_a_config_error(tmp_path: Path) -> None:
    store = ControlVariateStore(SPECS, tmp_path)
    store.save(1, variate((1.0, 2.0)))
    (path,) = tmp_path.glob("round-*.cv")
    raw = bytearray(path.read_bytes())
    raw[-9] ^= 0xFF  # a byte of the tensors
    path.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="checksum mismatch"):
        store.for_round(2)
    store.save(1, variate((1.0, 2.0)))
    other = ControlVariateStore([TensorSpec("w", torch.float32, (3,))], tmp_path)
    with pytest.raises(ConfigError, match="does not hold this model's control variate"):
        other.for_round(2)
    path.write_bytes(b"not a variate")
    with pytest.raises(ConfigError, match="not a fedsilo control-variate file"):
        store.for_round(2)
