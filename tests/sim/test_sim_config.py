"""fl-sim's server config carries every job setting: none is copied by hand, none is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.common.errors import ConfigError
from fedsilo.server.job_spec import JobSpec
from fedsilo.sim.config import SimConfig

# A value other than the default for every JobSpec field (consistent with each other).
NOT_DEFAULT = {
    "task": "digits",
    "task_options": {"partition": "iid"},
    "rounds": 7,
    "seed": 11,
    "strategy": "trimmed-mean",
    "strategy_options": {"trim_fraction": 0.25},
    "min_clients": 3,
    "clients_per_round": 4,
    "fraction": None,  # excludes clients_per_round; its default is None too, see below
    "local_epochs": 2,
    "batch_size": 8,
    "learning_rate": 0.05,
    "proximal_mu": 0.01,
    "optimizer": "sgd",  # its default; adam excludes momentum below, carried in its own test
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,
    "compression": "topk",
    "topk_fraction": 0.5,
    "per_channel": True,
    "update_norm_bound": 3.0,
    "norm_bound_action": "clip",
    "tensorboard": True,
    "chunk_size": 4096,
    "weighting": "uniform",
    "central_data": Path("/srv/central"),
    # Secure aggregation and DP-FedAvg exclude update_norm_bound, topk and trimmed-mean above:
    # off, their other settings not.
    "secure_aggregation": False,
    "secagg_clip_norm": 2.0,
    "secagg_max_weight": 100,
    "dp_noise_multiplier": None,
    "dp_clip_norm": 0.5,
    "dp_delta": 1e-6,
    "dp_target_epsilon": 4.0,
    "dp_population": 8,
    "dp_accountant": "pld",
    "dp_noise_seed": 3,
    "max_examples": 5000,
    "require_dp": True,
}


def test_the_table_names_every_job_setting():
    # Fails when a field is added to JobSpec: give it a value here, and the test below checks
    # that fl-sim carries it into the server's config.
    assert sorted(NOT_DEFAULT) == sorted(JobSpec.model_fields)


def test_server_config_carries_every_job_setting(tmp_path):
    config = SimConfig(**NOT_DEFAULT, clients=6, out=tmp_path, log_level="debug")
    server = config.server_config(6)
    for name, value in NOT_DEFAULT.items():
        assert getattr(server, name) == value, name
        # Carried in their own tests (below): their defaults exclude the others' values.
        if name not in ("fraction", "dp_noise_multiplier", "secure_aggregation", "optimizer"):
            assert value != JobSpec.model_fields[name].get_default(call_default_factory=True)
    assert (server.start_clients, server.max_clients, server.run_dir) == (6, 6, tmp_path)
    assert server.log_level == "debug"


def test_fraction_is_carried_too(tmp_path):
    config = SimConfig(fraction=0.5, out=tmp_path)
    assert config.server_config(4).fraction == 0.5


def test_adam_is_carried_too(tmp_path):
    config = SimConfig(optimizer="adam", weight_decay=0.01, out=tmp_path)
    server = config.server_config(4)
    assert (server.optimizer, server.weight_decay) == ("adam", 0.01)


def test_dp_fedavg_settings_are_carried_too(tmp_path):
    config = SimConfig(
        dp_noise_multiplier=1.1,
        dp_clip_norm=0.5,
        clients_per_round=4,
        weighting="uniform",
        out=tmp_path,
    )
    server = config.server_config(8)
    assert (server.dp_noise_multiplier, server.dp_clip_norm) == (1.1, 0.5)


def test_fewer_clients_than_min_clients_is_one_config_error():
    with pytest.raises(ConfigError, match="min_clients 3"):
        SimConfig(min_clients=3, out=Path("x")).server_config(2)
