"""The privacy ledger: every charge on disk at once; a resumed job spends from it, not from an
older checkpoint (whose rounds after it were sent once already and are sent again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedsilo.server.dp_round import DpRound
from fedsilo.server.privacy import DpFedAvgSettings


def settings(mode: str = "central") -> DpFedAvgSettings:
    return DpFedAvgSettings.model_validate(
        {
            "noise_multiplier": 1.2,
            "clip_norm": 1.0,
            "mode": mode,
            "clients_per_round": 4,
            "population": 4,
            "delta": 1e-5,
        }
    )


def test_a_resumed_job_spends_from_the_ledger_not_the_older_checkpoint(tmp_path: Path) -> None:
    ledger = tmp_path / "privacy_ledger.json"
    first = DpRound(settings(), ledger=ledger)
    first.charge()
    checkpoint = first.state_dict()  # the checkpoint is written after round 1 only
    spent = [first.charge()["epsilon"] for _ in range(2)][-1]  # rounds 2 and 3 released
    assert json.loads(ledger.read_text())["rounds"] == [3]

    resumed = DpRound(settings(), ledger=ledger, resume=True)
    resumed.load_state_dict(checkpoint)  # the job resumes from round 1's checkpoint
    assert resumed.accountant.rounds == 3
    assert resumed.accountant.epsilon("rdp") == pytest.approx(spent)
    assert resumed.charge()["epsilon"] > spent  # round 2 again: charged again


def test_a_fresh_job_ignores_an_old_ledger_and_a_checkpoint_may_lead(tmp_path: Path) -> None:
    ledger = tmp_path / "privacy_ledger.json"
    old = DpRound(settings(), ledger=ledger)
    old.charge()
    assert DpRound(settings(), ledger=ledger).accountant.rounds == 0  # no --resume: a new job
    later = DpRound(settings())
    for _ in range(2):
        later.charge()
    resumed = DpRound(settings(), ledger=ledger, resume=True)
    resumed.load_state_dict(later.state_dict())  # a ledger behind the checkpoint: never less
    assert resumed.accountant.rounds == 2


def test_distributed_rounds_are_charged_at_the_survivors_noise(tmp_path: Path) -> None:
    dp = DpRound(settings("distributed"), min_contributors=2)
    state = {"w": torch.zeros(3)}
    dp.noised(state, {"w": state["w"].clone()}, contributors=1, round_number=1)
    row = dp.charge()
    assert row["dp"]["noise_multiplier"] == pytest.approx(1.2 * 0.5)  # z * sqrt(1 / 4)
