"""The job's local optimizer settings: checked in JobSpec, carried on the wire into the task's
TrainConfig, bounded by the client's policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fedsilo.client.policy import TrainingBounds
from fedsilo.client.work import train_config
from fedsilo.common.compression import Compression
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server import messages
from fedsilo.server.config import ServerConfig
from fedsilo.server.job_spec import JobSpec


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optimizer": "adam", "momentum": 0.9}, "momentum: Adam keeps its own moments"),
        ({"nesterov": True}, "nesterov: Nesterov momentum needs momentum > 0"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"strategy": "fednova", "optimizer": "adam"}, "FedNova normalizes heavy-ball SGD's"),
        ({"strategy": "fednova", "momentum": 0.9, "nesterov": True}, "without nesterov"),
        ({"strategy": "scaffold", "clients_per_round": 2}, "give the federation's size N"),
        (
            {"strategy": "scaffold", "secure_aggregation": True, "secagg_clip_norm": 1.0},
            "strategy: scaffold sends each update's control-variate change",
        ),
        (
            {"strategy": "fednova", "secure_aggregation": True, "secagg_clip_norm": 1.0},
            "strategy: fednova weighs each update by its own local steps",
        ),
        (
            {
                "strategy": "scaffold",
                "dp_noise_multiplier": 1.0,
                "dp_clip_norm": 1.0,
                "clients_per_round": 2,
                "min_clients": 2,
                "weighting": "uniform",
            },
            "scaffold is not analysed under it",
        ),
    ],
)
def test_inconsistent_optimizer_settings_are_refused(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        JobSpec(**settings)


def test_the_settings_travel_from_the_job_to_the_tasks_train_config(tmp_path: Path) -> None:
    config = ServerConfig(
        job_id=0,
        insecure=True,
        out=tmp_path,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        learning_rate=0.01,
    )
    wire = messages.train_config(config, round_number=3, client_id=1)
    # Through the bytes, as a client gets them.
    received = pb.TrainConfig.FromString(wire.SerializeToString())
    task_config = train_config(received)
    assert (task_config.optimizer, task_config.momentum, task_config.nesterov) == ("sgd", 0.9, True)
    assert (task_config.weight_decay, task_config.learning_rate) == (1e-4, 0.01)
    assert task_config.seed == wire.seed != 0
    job = messages.job_config(config, Compression())
    assert (job.train.momentum, job.train.nesterov, job.train.weight_decay) == (0.9, True, 1e-4)
    assert not job.control_variates
    scaffold = config.model_copy(update={"strategy": "scaffold"})
    assert messages.job_config(scaffold, Compression()).control_variates


def test_the_clients_bounds_name_every_optimizer_setting_out_of_bounds() -> None:
    bounds = TrainingBounds(max_sgd_momentum=0.5, max_decay=0.01, allow_adam=False)
    base = {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.1}
    assert bounds.problems(pb.TrainConfig(**base, momentum=0.5, weight_decay=0.01)) == []
    assert bounds.problems(
        pb.TrainConfig(**base, momentum=0.9, nesterov=True, weight_decay=0.5)
    ) == ["momentum 0.9 not in [0, 0.5]", "weight_decay 0.5 not in [0, 0.01]"]
    assert bounds.problems(pb.TrainConfig(**base, optimizer="adam")) == [
        "optimizer adam is not allowed (allow_adam is off)"
    ]
    assert bounds.problems(pb.TrainConfig(**base, nesterov=True)) == ["nesterov needs momentum > 0"]
    assert bounds.problems(pb.TrainConfig(**base, momentum=float("nan"))) == [
        "momentum nan not in [0, 0.5]"
    ]
    (unknown,) = bounds.problems(pb.TrainConfig(**base, optimizer="x" * 500))
    assert unknown.startswith("optimizer ") and len(unknown) < 200
