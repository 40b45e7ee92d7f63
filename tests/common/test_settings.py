"""Config loading: file < env < CLI precedence, one-line errors naming the field, and the CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from fedsilo.client.config import ClientConfig
from fedsilo.common.errors import ConfigError
from fedsilo.common.ports import job_port
from fedsilo.common.settings import load_config
from fedsilo.server.cli import main as server_main
from fedsilo.server.config import ServerConfig
from fedsilo.sim.cli import main as sim_main
from fedsilo.sim.config import SimConfig

BIN = Path(sys.executable).parent


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text, encoding="utf-8")
    return path


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# These tests are about config loading, not transport: run everything with --insecure.
PLAIN = {"FEDSILO_INSECURE": "1"}

FILE_SETTINGS = {
    "toml": 'job_id = 1\nrounds = 3\nseed = 7\nround-timeout = 10.0\ntask = "synthetic"\n',
    "yaml": "job_id: 1\nrounds: 3\nseed: 7\nround-timeout: 10.0\ntask: synthetic\n",
}


@pytest.mark.parametrize("kind", ["toml", "yaml"])
def test_precedence_is_file_then_env_then_cli(tmp_path, kind):
    writer = write_toml if kind == "toml" else write_yaml
    path = writer(tmp_path, FILE_SETTINGS[kind])
    environ = {**PLAIN, "FEDSILO_ROUNDS": "4", "FEDSILO_SEED": "8"}
    config = load_config(ServerConfig, {"seed": 9, "batch_size": None}, path, environ)
    assert config.round_timeout == 10.0  # file only
    assert config.rounds == 4  # env beats file
    assert config.seed == 9  # CLI beats env and file
    assert config.job_id == 1
    assert config.batch_size == 32  # default (a None CLI value means "not given")


def test_file_alone_sets_values_over_defaults(tmp_path):
    path = write_yaml(tmp_path, FILE_SETTINGS["yaml"])
    config = load_config(ServerConfig, {}, path, environ=PLAIN)
    assert (config.rounds, config.seed, config.round_timeout) == (3, 7, 10.0)


def test_env_alone_sets_values_over_defaults():
    environ = {**PLAIN, "FEDSILO_JOB_ID": "5", "FEDSILO_LEARNING_RATE": "0.25", "OTHER": "x"}
    config = load_config(ServerConfig, {}, environ=environ)
    assert config.job_id == 5
    assert config.learning_rate == 0.25


def test_fedsilo_config_env_names_the_config_file(tmp_path):
    path = write_toml(tmp_path, FILE_SETTINGS["toml"])
    config = load_config(ServerConfig, {}, environ={**PLAIN, "FEDSILO_CONFIG": str(path)})
    assert config.rounds == 3


def test_unknown_key_in_file_is_refused_naming_the_key(tmp_path):
    path = write_toml(tmp_path, "job_id = 1\nrondus = 3\n")
    with pytest.raises(ConfigError, match="rondus") as info:
        load_config(ServerConfig, {}, path, environ=PLAIN)
    assert "unknown setting" in str(info.value)


@pytest.mark.parametrize(
    ("cli", "environ", "field"),
    [
        ({"job_id": -1}, {}, "job_id"),
        ({"job_id": 1, "round_timeout": 0.0}, {}, "round_timeout"),
        ({"job_id": 1}, {"FEDSILO_ROUND_TIMEOUT": "soon"}, "round_timeout"),
        ({"job_id": 1}, {"FEDSILO_ROUNDS": "abc"}, "rounds"),
        ({"job_id": 1, "chunk_size": 10}, {}, "chunk_size"),
        ({"job_id": 1, "log_level": "loud"}, {}, "log_level"),
        ({}, {}, "job_id"),  # required
    ],
)
def test_bad_value_is_refused_naming_the_field(cli, environ, field):
    with pytest.raises(ConfigError, match=field) as info:
        load_config(ServerConfig, cli, environ=environ)
    assert "\n" not in str(info.value)


def test_bad_value_in_file_is_refused_naming_the_field(tmp_path):
    path = write_yaml(tmp_path, "job_id: 1\nmin_clients: 0\n")
    with pytest.raises(ConfigError, match="min_clients"):
        load_config(ServerConfig, {}, path, environ=PLAIN)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bad.toml", "job_id = = 1\n"),
        ("bad.yaml", "job_id: [1\n"),
        ("list.yaml", "- 1\n- 2\n"),
        ("server.json", '{"job_id": 1}'),
    ],
)
def test_unusable_config_file_is_refused(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=name):
        load_config(ServerConfig, {"job_id": 1}, path, environ=PLAIN)


def test_missing_config_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(ServerConfig, {"job_id": 1}, tmp_path / "absent.toml", environ=PLAIN)


# ------------------------------------------------------------------ server config


def test_port_beyond_65535_is_refused_naming_the_port():
    with pytest.raises(ConfigError, match="port"):
        load_config(ServerConfig, {"job_id": 1, "port_base": 65535}, environ=PLAIN)


def test_port_zero_is_refused():
    with pytest.raises(ConfigError, match="port"):
        load_config(ServerConfig, {"job_id": 0, "port_base": 0}, environ=PLAIN)


def test_highest_port_is_accepted():
    config = load_config(ServerConfig, {"job_id": 535, "port_base": 65000}, environ=PLAIN)
    assert config.port == 65535


@pytest.mark.parametrize(("port_base", "job_id", "port"), [(50000, 0, 50000), (40000, 17, 40017)])
def test_job_listens_on_port_base_plus_job_id(port_base, job_id, port):
    assert job_port(port_base, job_id) == port
    assert ServerConfig(insecure=True, job_id=job_id, port_base=port_base).port == port


def test_default_port_base_is_50000():
    assert ServerConfig(insecure=True, job_id=3).port == 50003


def test_run_dir_defaults_to_runs_job_id(tmp_path):
    assert ServerConfig(insecure=True, job_id=12).run_dir == Path("runs") / "job-12"
    assert ServerConfig(insecure=True, job_id=12, out=tmp_path).run_dir == tmp_path


def test_server_config_is_frozen():
    config = ServerConfig(insecure=True, job_id=1)
    with pytest.raises(ValidationError):
        config.rounds = 9  # type: ignore[misc]


# ------------------------------------------------------------------ client config


@pytest.mark.parametrize("server", ["localhost:50001", "10.0.0.1:1", "[::1]:65535", "a.b:50000"])
def test_client_accepts_host_port(server):
    assert ClientConfig(insecure=True, server=server, name="org").server == server


@pytest.mark.parametrize(
    "server",
    [
        "nocolon",
        ":50000",
        "host:",
        "host:0",
        "host:65536",
        "host:abc",
        "host:-1",
        "host:+80",
        pytest.param("host:\u0665\u0660\u0660\u0660\u0660", id="arabic-indic-digits"),
    ],
)
def test_client_refuses_server_that_is_not_host_port(server):
    with pytest.raises(ConfigError, match="server"):
        load_config(ClientConfig, {"server": server, "name": "org"}, environ=PLAIN)


def test_client_refuses_bad_name():
    with pytest.raises(ConfigError, match="name"):
        load_config(ClientConfig, {"server": "h:1", "name": "has space"}, environ=PLAIN)


def test_client_env_and_cli_precedence():
    environ = {
        **PLAIN,
        "FEDSILO_SERVER": "env:1",
        "FEDSILO_NAME": "from-env",
        "FEDSILO_JOB_ID": "4",
    }
    config = load_config(ClientConfig, {"server": "cli:2"}, environ=environ)
    assert (config.server, config.name, config.job_id) == ("cli:2", "from-env", 4)


# ------------------------------------------------------------------ the real command lines


def run_cli(tmp_path: Path, script: str, *args: str, env: dict[str, str] | None = None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_")}
    environ.update(PLAIN)
    environ.update(env or {})
    return subprocess.run(
        [str(BIN / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=environ,
        check=False,
    )


@pytest.mark.parametrize(
    ("script", "args", "env", "named"),
    [
        pytest.param("fl-server", ["--job-id", "-1"], {}, "job_id", id="negative-job-id"),
        pytest.param(
            "fl-server", ["--job-id", "1", "--port-base", "65535"], {}, "port", id="port-range"
        ),
        pytest.param(
            "fl-server", ["--job-id", "1"], {"FEDSILO_ROUNDS": "abc"}, "rounds", id="env-rounds"
        ),
        pytest.param("fl-client", ["--server", "nocolon"], {}, "server", id="client-server"),
        pytest.param(
            "fl-server",
            ["--job-id", "1", "--compression", "topk", "--topk-fraction", "0"],
            {},
            "topk_fraction",
            id="topk-fraction",
        ),
        pytest.param(
            "fl-sim", ["--topk-fraction", "1.5"], {}, "topk_fraction", id="sim-topk-fraction"
        ),
    ],
)
def test_cli_bad_config_exits_2_with_one_line_naming_the_problem(
    tmp_path, script, args, env, named
):
    result = run_cli(tmp_path, script, *args, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{script}: error:")
    assert named in lines[0]
    assert not (tmp_path / "runs").exists()


def test_server_without_tls_or_insecure_refuses_to_start(tmp_path):
    result = run_cli(tmp_path, "fl-server", "--job-id", "1", env={"FEDSILO_INSECURE": "0"})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--tls" in line and "--insecure" in line


def test_client_without_bundle_or_insecure_refuses_to_start(tmp_path):
    result = run_cli(tmp_path, "fl-client", "--server", "h:1", env={"FEDSILO_INSECURE": "0"})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--bundle" in line and "--insecure" in line


def test_tls_and_insecure_together_are_refused():
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(ServerConfig, {"job_id": 1, "tls": "x"}, environ=PLAIN)


# ------------------------------------------------------------------ unknown names: did you mean


def test_unknown_file_key_suggests_the_closest_setting(tmp_path):
    path = write_toml(tmp_path, "job_id = 1\nrondus = 3\nzzz_qqq = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(ServerConfig, {}, path, environ=PLAIN)
    assert "rondus: unknown setting" in str(info.value)
    assert "did you mean rounds?" in str(info.value)
    assert "zzz_qqq: unknown setting" in str(info.value)  # no near name: no suggestion for it
    assert str(info.value).count("did you mean") == 1


def test_env_typo_of_a_setting_is_refused_with_the_suggestion():
    environ = {**PLAIN, "FEDSILO_JOB_ID": "1", "FEDSILO_ROUNDZ": "3"}
    with pytest.raises(ConfigError, match="FEDSILO_ROUNDZ") as info:
        load_config(ServerConfig, {}, environ=environ, warn=pytest.fail)
    assert "did you mean FEDSILO_ROUNDS?" in str(info.value)


def test_env_name_no_setting_is_close_to_only_warns_and_loading_goes_on():
    warnings: list[str] = []
    environ = {**PLAIN, "FEDSILO_BUNDLE": "/x", "FEDSILO_ROUNDS": "4", "FEDSILO_CACHE_DIR": "/c"}
    config = load_config(ServerConfig, {"job_id": 1}, environ=environ, warn=warnings.append)
    assert config.rounds == 4
    assert warnings == ["FEDSILO_BUNDLE is not a setting of this program; ignored"]


def test_env_name_of_a_sibling_program_is_ignored_without_a_word():
    # FEDSILO_MAX_CLIENTS is fl-server's; to fl-sim it looks like a typo of min_clients (0.82).
    warnings: list[str] = []
    environ = {"FEDSILO_MAX_CLIENTS": "8"}
    config = load_config(
        SimConfig, {}, environ=environ, warn=warnings.append, foreign={"max_clients"}
    )
    assert warnings == []
    assert config.min_clients == 1
    with pytest.raises(ConfigError, match="did you mean FEDSILO_MIN_CLIENTS"):
        load_config(SimConfig, {}, environ=environ, warn=warnings.append)


def test_table_setting_from_env_is_json():
    environ = {
        **PLAIN,
        "FEDSILO_STRATEGY": "fedavgm",
        "FEDSILO_STRATEGY_OPTIONS": '{"momentum": 0.5}',
    }
    config = load_config(ServerConfig, {"job_id": 1}, environ=environ)
    assert config.strategy_options == {"momentum": 0.5}
    with pytest.raises(ConfigError, match="strategy_options"):
        load_config(
            ServerConfig, {"job_id": 1}, environ={**environ, "FEDSILO_STRATEGY_OPTIONS": "{"}
        )


def test_a_config_built_in_code_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("FEDSILO_ROUNDS", "9")
    assert ServerConfig(insecure=True, job_id=1).rounds == 5
    monkeypatch.setenv("FEDSILO_INSECURE", "true")
    assert load_config(ServerConfig, {"job_id": 1}).rounds == 9


# ------------------------------------------------------------------ the command lines, again


def test_fl_sim_takes_flag_over_env_over_file_over_default_and_warns_about_a_stranger(tmp_path):
    path = write_toml(tmp_path, 'rounds = 4\nclients = 3\nout = "from-file"\n')
    env = {
        "FEDSILO_ROUNDS": "3",
        "FEDSILO_CLIENTS": "2",
        "FEDSILO_CONFIG": str(path),
        "FEDSILO_ZEBRA_STRIPES": "7",  # no fedsilo program's setting, close to none of fl-sim's
        "FEDSILO_MAX_CLIENTS": "9",  # fl-server's (and FEDSILO_INSECURE, from run_cli): silent
    }
    result = run_cli(tmp_path, "fl-sim", "--rounds", "1", "--threads", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert "2 clients" in result.stdout  # env over file
    assert "1 rounds" in result.stdout  # flag over env and file
    assert (tmp_path / "from-file" / "model.pt").exists()  # file over the default runs/sim
    assert not (tmp_path / "runs").exists()
    assert result.stderr.splitlines() == [
        "fl-sim: warning: FEDSILO_ZEBRA_STRIPES is not a setting of this program; ignored"
    ]


@pytest.fixture
def in_clean_env(tmp_path, monkeypatch):
    """Run in tmp_path with no FEDSILO_* variable but those a test sets (and --insecure)."""
    for key in [key for key in os.environ if key.startswith("FEDSILO_")]:
        monkeypatch.delenv(key)
    for key, value in PLAIN.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param(
            ["fl-server", "--job-id", "1"],
            {"FEDSILO_LERNING_RATE": "0.2"},
            "FEDSILO_LERNING_RATE: not a setting (did you mean FEDSILO_LEARNING_RATE?)",
            id="server-env-typo",
        ),
        pytest.param(
            ["fl-sim"],
            {"FEDSILO_ROUNDZ": "2"},
            "FEDSILO_ROUNDZ: not a setting (did you mean FEDSILO_ROUNDS?)",
            id="sim-env-typo",
        ),
        pytest.param(
            ["fl-server", "--job-id", "1", "--config", "server.toml"],
            {},
            "batchsize: unknown setting in server.toml (did you mean batch_size?)",
            id="server-file-typo",
        ),
        pytest.param(
            ["fl-sim", "--config", "server.toml"],
            {},
            "batchsize: unknown setting in server.toml (did you mean batch_size?)",
            id="sim-file-typo",
        ),
    ],
)
def test_cli_unknown_name_close_to_a_setting_exits_2_suggesting_it(
    in_clean_env, capsys, argv, env, expected
):
    write_toml(Path(), "batchsize = 8\n")
    for key, value in env.items():
        in_clean_env.setenv(key, value)
    script, *args = argv
    main = server_main if script == "fl-server" else sim_main
    assert main(args) == 2  # refused before anything runs: no job, no logging set up
    assert capsys.readouterr().err.splitlines() == [f"{script}: error: {expected}"]
    assert not Path("runs").exists()


def test_cli_wrong_strategy_option_names_it_and_the_valid_ones(tmp_path):
    write_toml(tmp_path, 'strategy = "fedavgm"\nstrategy_options = {momentun = 0.9}\n')
    result = run_cli(tmp_path, "fl-server", "--job-id", "1", "--config", "server.toml")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line == (
        "fl-server: error: strategy_options: fedavgm has no option 'momentun'; "
        "valid options of fedavgm: momentum, server_learning_rate"
    )
    assert "unexpected keyword" not in line
