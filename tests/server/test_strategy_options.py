"""Strategy options: one model per strategy, checked as the config loads, naming the valid ones."""

from __future__ import annotations

import inspect

import pytest

from fedsilo.common.errors import ConfigError
from fedsilo.common.settings import load_config
from fedsilo.server.config import ServerConfig
from fedsilo.server.strategies import STRATEGIES, make_strategy


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_options_model_matches_the_constructor(name):
    # The model is what configs are checked against; the class is built with its values.
    entry = STRATEGIES[name]
    parameters = inspect.signature(entry.build).parameters
    fields = entry.options.model_fields
    assert sorted(parameters) == sorted(fields)
    for option, field in fields.items():
        assert parameters[option].default == field.default, option
    assert entry.options.model_config["extra"] == "forbid"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_has_the_method_its_shape_calls(name):
    strategy = make_strategy(name, {})
    assert strategy.name == name
    assert isinstance(strategy.needs_all_updates, bool)
    method = "combine" if strategy.needs_all_updates else "next_global"
    assert callable(getattr(strategy, method))


def load(strategy, options):
    return load_config(
        ServerConfig,
        {"job_id": 1, "strategy": strategy, "strategy_options": options},
        environ={"FEDSILO_INSECURE": "1"},
    )


@pytest.mark.parametrize(
    ("strategy", "options", "named"),
    [
        ("fedavgm", {"momentun": 0.9}, "fedavgm has no option 'momentun'"),
        ("fedavgm", {"momentum": 1.0}, "momentum: Input should be less than 1"),
        ("trimmed-mean", {"trim_fraction": 0.5}, "trim_fraction: Input should be less than 0.5"),
        ("krum", {"byzantine": -1}, "byzantine: Input should be greater than or equal to 0"),
        ("krum", {"multi": 0}, "multi: Input should be greater than or equal to 1"),
        ("fedadagrad", {"beta2": 0.9}, "fedadagrad has no option 'beta2'"),
        ("fedavg", {"eta": 0.1}, "fedavg has no option 'eta'"),
    ],
)
def test_a_bad_option_is_refused_when_the_config_loads(strategy, options, named):
    with pytest.raises(ConfigError) as info:
        load(strategy, options)
    line = str(info.value)
    assert line.startswith("strategy_options: ")
    assert named in line
    valid = ", ".join(sorted(STRATEGIES[strategy].options.model_fields)) or "none"
    assert line.endswith(f"valid options of {strategy}: {valid}")


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("fedavgm", {"momentum": 0.0, "server_learning_rate": 0.5}),
        ("trimmed-mean", {"trim_fraction": 0.0}),
        ("krum", {"byzantine": 0, "multi": 2}),
        ("fedyogi", {"beta2": 0.5, "initial_v": 0}),
    ],
)
def test_options_within_bounds_load_and_build(strategy, options):
    config = load(strategy, options)
    assert config.strategy_options == options
    make_strategy(config.strategy, config.strategy_options)


def test_unknown_strategy_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match="unknown strategy 'fedsgd'; choose from fedavg"):
        load("fedsgd", {})
