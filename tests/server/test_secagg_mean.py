"""The server's unmasked mean as a model: into the buffers it is given, in ranges on threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsilo.common.secagg import SecAggConfig, result
from fedsilo.common.secagg.quantize import Quantizer
from fedsilo.common.secagg.result import AggregateResult
from fedsilo.common.secagg.vectors import write_mean
from fedsilo.server.secagg_round import SecAggRound

CONFIG = SecAggConfig(clip_norm=10.0, max_weight=1, allow_unsigned=True)


def _round(tmp_path: Path, state: dict[str, torch.Tensor], length: int) -> SecAggRound:
    agg = SecAggRound(
        job_id=0,
        round_number=1,
        participants=[0, 1, 2],
        global_state=state,
        config=CONFIG,
        trust=None,
        tee_dir=tmp_path,
    )
    words = np.random.default_rng(0).integers(-(10**6), 10**6, length + 1).astype(np.int32)
    words = words.view(np.uint32)
    words[-1] = 3  # the weight word: three clients of weight 1
    agg.result = AggregateResult(words, Quantizer.for_round(CONFIG, 3), (0, 1, 2), ())
    return agg


@pytest.mark.parametrize("min_words", [1 << 22, 1000])  # one range; several, on threads
def test_the_mean_lands_in_the_given_buffers_with_the_serial_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, min_words: int
) -> None:
    monkeypatch.setattr(result, "PARALLEL_MIN_WORDS", min_words)
    torch.manual_seed(1)
    state = {
        "w": torch.randn(7001),
        "steps": torch.tensor(9),
        "b": torch.randn(30, 100, dtype=torch.float64),
    }
    agg = _round(tmp_path, state, 7001 + 3000)
    out = {name: torch.full_like(t, 5) for name, t in state.items()}
    pointers = {name: t.data_ptr() for name, t in out.items()}
    mean = agg.mean_state(state, out)
    assert {name: t.data_ptr() for name, t in mean.items()} == pointers  # no new memory
    expected = {name: t.clone() for name, t in state.items()}
    write_mean(agg.result.mean_chunks(chunk_words=999), state, expected)
    for name in state:
        assert torch.equal(mean[name], expected[name]), name
    assert int(mean["steps"]) == 9  # not floating: copied, not averaged
    assert not torch.equal(mean["w"], state["w"])


def test_without_buffers_the_mean_gets_new_tensors(tmp_path: Path) -> None:
    state = {"w": torch.randn(500)}
    agg = _round(tmp_path, state, 500)
    mean = agg.mean_state(state)
    assert mean["w"].data_ptr() != state["w"].data_ptr()
    decoded = agg.result.mean()
    assert torch.equal(mean["w"], (state["w"].double() + torch.from_numpy(decoded)).float())
