"""One job spec: every setting reachable from the command line, flags derived from the fields."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fedsilo.client.config import ClientConfig
from fedsilo.common.cli import flag_values
from fedsilo.common.compression import CODECS
from fedsilo.common.errors import ConfigError
from fedsilo.common.logging import LEVELS
from fedsilo.common.settings import check_environment, load_config
from fedsilo.server import cli as server_cli
from fedsilo.server.config import ServerConfig
from fedsilo.server.job_spec import JobSpec
from fedsilo.sim import cli as sim_cli
from fedsilo.sim.config import SimConfig

PROGRAMS = [
    pytest.param(server_cli.build_parser, ServerConfig, id="fl-server"),
    pytest.param(sim_cli.build_parser, SimConfig, id="fl-sim"),
]

# Every flag the hand-written parsers had before the job spec; each keeps its name.
SERVER_FLAGS_BEFORE = [
    "--config",
    "--task",
    "--rounds",
    "--min-clients",
    "--seed",
    "--strategy",
    "--local-epochs",
    "--batch-size",
    "--learning-rate",
    "--lr",
    "--proximal-mu",
    "--clients-per-round",
    "--fraction",
    "--tensorboard",
    "--compression",
    "--topk-fraction",
    "--per-channel",
    "--job-id",
    "--port-base",
    "--host",
    "--out",
    "--round-timeout",
    "--progress-timeout",
    "--resume",
    "--join-timeout",
    "--start-clients",
    "--chunk-size",
    "--max-clients",
    "--update-norm-bound",
    "--norm-bound-action",
    "--tls",
    "--insecure",
    "--health-port",
    "--log-level",
]
SIM_FLAGS_BEFORE = [
    "--config",
    "--task",
    "--rounds",
    "--min-clients",
    "--seed",
    "--strategy",
    "--local-epochs",
    "--batch-size",
    "--learning-rate",
    "--lr",
    "--proximal-mu",
    "--clients-per-round",
    "--fraction",
    "--tensorboard",
    "--compression",
    "--topk-fraction",
    "--per-channel",
    "--clients",
    "--out",
    "--device",
    "--threads",
    "--log-level",
]


def actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions}


@pytest.mark.parametrize(("build", "model"), PROGRAMS)
def test_every_setting_has_a_flag_or_is_documented_as_file_only(build, model):
    parser = build()
    actions = actions_by_dest(parser)
    file_only = [name for name in model.model_fields if name not in actions]
    assert file_only == ["task_options", "strategy_options"]
    for name in file_only:
        assert "config file" in model.model_fields[name].description
        assert name in parser.epilog
    for name in JobSpec.model_fields:
        assert name in actions or name in file_only


@pytest.mark.parametrize(
    ("build", "before"),
    [(server_cli.build_parser, SERVER_FLAGS_BEFORE), (sim_cli.build_parser, SIM_FLAGS_BEFORE)],
    ids=["fl-server", "fl-sim"],
)
def test_every_flag_of_before_keeps_its_name(build, before):
    options = {option for action in build()._actions for option in action.option_strings}
    assert sorted(set(before) - options) == []


@pytest.mark.parametrize(("build", "model"), PROGRAMS)
def test_flag_help_is_the_field_description_with_its_default(build, model):
    actions = actions_by_dest(build())
    for name, field in model.model_fields.items():
        if name in actions:
            assert actions[name].help.startswith(field.description.rstrip(".")), name
    assert actions["rounds"].help.endswith("(default 5)")
    assert actions["compression"].choices == CODECS  # from the Literal
    assert actions["norm_bound_action"].choices == ("reject", "clip")
    assert actions["log_level"].choices == LEVELS


def test_defaults_that_differ_are_declared_by_the_program_and_keep_the_bounds():
    assert ServerConfig.model_fields["min_clients"].default == 2
    assert SimConfig.model_fields["min_clients"].default == 1
    assert (
        SimConfig.model_fields["min_clients"].description
        == JobSpec.model_fields["min_clients"].description
    )
    with pytest.raises(ConfigError, match="min_clients"):
        load_config(SimConfig, {"min_clients": 0}, environ={})
    sim_help = actions_by_dest(sim_cli.build_parser())
    assert sim_help["min_clients"].help.endswith("(default 1)")
    assert sim_help["log_level"].help.endswith("(default warning)")
    assert actions_by_dest(server_cli.build_parser())["log_level"].help.endswith("(default info)")


def parse_and_load(model, build, argv, environ, config_file=None):
    args = build().parse_args(argv)
    return load_config(model, flag_values(args), args.config or config_file, environ)


def test_switches_turn_a_setting_off_or_on_over_env_and_file(tmp_path):
    path = tmp_path / "sim.yaml"
    path.write_text("tensorboard: true\nper_channel: true\n", encoding="utf-8")
    environ = {"FEDSILO_PER_CHANNEL": "false"}
    config = parse_and_load(SimConfig, sim_cli.build_parser, ["--config", str(path)], environ)
    assert (config.tensorboard, config.per_channel) == (True, False)  # file; env over file
    argv = ["--config", str(path), "--no-tensorboard", "--per-channel"]
    config = parse_and_load(SimConfig, sim_cli.build_parser, argv, environ)
    assert (config.tensorboard, config.per_channel) == (False, True)  # flags over both


def test_alias_lr_and_typed_flags_land_in_their_fields():
    argv = ["--job-id", "3", "--lr", "0.5", "--out", "x", "--fraction", "0.5", "--insecure"]
    config = parse_and_load(ServerConfig, server_cli.build_parser, argv, {})
    assert config.learning_rate == 0.5
    assert config.out == Path("x")
    assert (config.fraction, config.job_id, config.insecure) == (0.5, 3, True)


@pytest.mark.parametrize(("build", "model"), PROGRAMS)
def test_an_absent_flag_leaves_the_setting_to_env_file_or_default(build, model):
    assert build().parse_args([]) == argparse.Namespace(config=None)


def test_a_bad_flag_value_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        sim_cli.build_parser().parse_args(["--compression", "zip"])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--compression" in line and "zip" in line


def own_settings(model) -> set[str]:
    return set(model.model_fields)


@pytest.mark.parametrize(
    ("model", "others", "foreign"),
    [
        # fl-server may share an environment with fl-client (it cannot know fl-client's names)
        pytest.param(ServerConfig, [ClientConfig, SimConfig], frozenset(), id="fl-server"),
        pytest.param(
            SimConfig, [ServerConfig, ClientConfig], sim_cli.FOREIGN_SETTINGS, id="fl-sim"
        ),
    ],
)
def test_no_setting_of_another_program_is_taken_for_a_typo(model, others, foreign):
    names = set().union(*(own_settings(other) for other in others)) - own_settings(model)
    environ = {f"FEDSILO_{name.upper()}": "1" for name in names}
    warnings: list[str] = []
    check_environment(model, environ, warnings.append, foreign)  # raises on a "typo"
    assert len(warnings) == len(names - foreign)
