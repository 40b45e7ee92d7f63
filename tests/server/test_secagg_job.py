"""Secure aggregation through a whole job (fl-sim runs the server's own job and the clients' own
protocol, every message through its wire form): the result is plain FedAvg's, within the
quantization bound; the settings that cannot work with it are refused at load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsilo.common.errors import ConfigError
from fedsilo.common.secagg import Quantizer, SecAggConfig
from fedsilo.server.secagg_round import SecAggRound
from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from fedsilo.tasks import load_task

CLIP = 50.0  # larger than any synthetic update: clipping changes nothing, only quantization does
DP = {"dp_noise_multiplier": 1.0, "dp_clip_norm": 1.0, "clients_per_round": 4}


def run(tmp_path: Path, name: str, **settings: Any) -> dict[str, torch.Tensor]:
    config = SimConfig(
        clients=4, rounds=1, threads=1, workers=0, seed=2, out=tmp_path / name, **settings
    )
    assert simulate(config).outcome.finished
    return torch.load(tmp_path / name / "model.pt", weights_only=True)


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize(
    ("weighting", "max_weight"),
    [("uniform", None), ("examples", 2000)],
    ids=["uniform", "examples"],
)
def test_the_masked_mean_is_fedavg_within_the_quantization_bound(
    tmp_path: Path, weighting: str, max_weight: int | None
) -> None:
    plain = run(tmp_path, "plain", weighting=weighting)
    masked = run(
        tmp_path,
        "masked",
        weighting=weighting,
        secure_aggregation=True,
        secagg_clip_norm=CLIP,
        secagg_max_weight=max_weight,
    )

    def rows(name: str) -> list[dict[str, Any]]:
        text = (tmp_path / name / "metrics.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    # Under secure aggregation the weights travel masked: they are read from the plain run.
    examples = [c["train_examples"] for c in rows("plain")[1]["clients"]]
    weights = examples if weighting == "examples" else [1] * 4
    config = SecAggConfig(clip_norm=CLIP, max_weight=max_weight or 1)
    bound = Quantizer.for_round(config, 4).mean_error_bound(4, sum(weights))
    difference = largest_difference(plain, masked)
    assert 0 < difference <= bound * 1.0001 + 1e-7  # float32 rounding of the model on top
    assert rows("masked")[1]["participants"] == [0, 1, 2, 3]
    assert all(c["train_examples"] == 0 for c in rows("masked")[1]["clients"])  # never in clear


def test_every_round_draws_new_keys(tmp_path: Path) -> None:
    state = load_task("synthetic").build_model(0).state_dict()
    config = SecAggConfig(clip_norm=1.0, max_weight=1, allow_unsigned=True)
    rounds = [
        SecAggRound(
            job_id=0,
            round_number=3,
            participants=[0, 1, 2],
            global_state=state,
            config=config,
            trust=None,
            tee_dir=tmp_path,
        )
        for _ in range(2)
    ]
    assert rounds[0].setup.attempt != rounds[1].setup.attempt  # the same round, run again


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"strategy": "median"}, "strategy"),
        ({"compression": "int8"}, "compression"),
        ({"update_norm_bound": 1.0}, "update_norm_bound"),
        ({"weighting": "examples"}, "secagg_max_weight"),
        ({"secagg_clip_norm": None}, "secagg_clip_norm"),
        ({**DP, "secagg_clip_norm": 2.0}, "secagg_clip_norm"),
        ({**DP, "dp_noise_seed": 7}, "dp_noise_seed"),
    ],
)
def test_what_cannot_work_with_secure_aggregation_is_refused_at_load(
    tmp_path: Path, settings: dict[str, Any], setting: str
) -> None:
    base: dict[str, Any] = {
        "secure_aggregation": True,
        "secagg_clip_norm": 1.0,
        "weighting": "uniform",
    }
    with pytest.raises((ConfigError, ValueError), match=setting):
        SimConfig(out=tmp_path, **{**base, **settings})


def test_distributed_dp_the_clients_noise_is_in_the_sum_and_charged(tmp_path: Path) -> None:
    # The same job with and without DP-FedAvg over secure aggregation: the clients clip to C
    # (both runs) and, with DP, each adds N(0, (zC)^2 / n) before masking; the server adds
    # nothing. The difference of the two models is then the noise of the mean, std z*C/n.
    z, clip, n = 2.0, 0.5, 4
    common: dict[str, Any] = {"weighting": "uniform", "secure_aggregation": True}
    masked = run(tmp_path, "masked", **common, secagg_clip_norm=clip)
    noised = run(
        tmp_path,
        "noised",
        **common,
        dp_noise_multiplier=z,
        dp_clip_norm=clip,
        clients_per_round=n,
    )
    again = run(
        tmp_path, "again", **common, dp_noise_multiplier=z, dp_clip_norm=clip, clients_per_round=n
    )
    differences = torch.cat([(noised[k].double() - masked[k].double()).reshape(-1) for k in masked])
    expected = z * clip / n
    assert abs(float(differences.std()) / expected - 1) < 0.15  # 610 values: ~3 std errors
    assert abs(float(differences.mean())) < 4 * expected / differences.numel() ** 0.5
    assert largest_difference(noised, again) > 0  # the noise is secret: never drawn twice alike
    row = json.loads((tmp_path / "noised" / "metrics.jsonl").read_text().splitlines()[1])
    assert row["dp"]["mode"] == "distributed" and row["dp"]["noise_multiplier"] == z
    assert row["epsilon"] > 0
