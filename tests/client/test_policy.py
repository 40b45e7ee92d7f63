"""The client's policy: where it comes from, what it admits, and what it refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from fedsilo.client.cli import main
from fedsilo.client.config import ClientConfig
from fedsilo.client.policy import ClientPolicy, PolicySettings, TrainingBounds, policy_of
from fedsilo.common.errors import ConfigError, PolicyError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.settings import load_config
from fedsilo.common.task_identity import TaskIdentity


def job(task: str, options: dict[str, object], **fields: object) -> pb.JobConfig:
    identity = TaskIdentity.of(task, options)
    values: dict[str, object] = {
        "rounds": 3,
        "train": pb.TrainConfig(local_epochs=1, batch_size=32, learning_rate=0.1),
        **fields,
    }
    return pb.JobConfig(
        task=task, task_options_json=identity.options_json, task_hash=identity.hash, **values
    )


def bundle_with_policy(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "policy.toml").write_text(text)
    return folder


def test_without_a_task_the_policy_takes_built_in_tasks_with_typed_options() -> None:
    policy = policy_of(PolicySettings(), None)
    assert policy.mode == "builtin"
    admitted = policy.admit(job("synthetic", {"max_samples": 40}))
    assert admitted.options == {"max_samples": 40} and type(admitted.options["max_samples"]) is int
    assert not admitted.local and admitted.task_class.__name__ == "SyntheticTask"


def test_a_local_task_admits_exactly_its_own_identity() -> None:
    policy = ClientPolicy.pinned("synthetic", {"max_samples": 40})
    assert policy.admit(job("synthetic", {"max_samples": 40})).local
    with pytest.raises(PolicyError, match="'max_samples': the server's 41, this client's 40"):
        policy.admit(job("synthetic", {"max_samples": 41}))
    with pytest.raises(PolicyError, match="asks for task 'digits', this client runs 'synthetic'"):
        policy.admit(job("digits", {}))


def test_a_forged_hash_is_refused() -> None:
    forged = job("synthetic", {"max_samples": 40})
    forged.task_options_json = '{"max_samples":10000}'  # the hash still says 40
    with pytest.raises(PolicyError, match="hash does not match"):
        ClientPolicy().admit(forged)


def test_every_setting_out_of_bounds_is_named() -> None:
    bounds = TrainingBounds(max_epochs=5, min_batch=8, max_batch=64)
    train = pb.TrainConfig(
        local_epochs=6, batch_size=4, learning_rate=float("nan"), proximal_mu=float("inf")
    )
    problems = bounds.problems(train)
    assert problems == [
        "local_epochs 6 not in 1..5",
        "batch_size 4 not in 8..64",
        "learning_rate nan not in (0, 10]",
        "proximal_mu inf is not a finite number >= 0",
    ]
    assert bounds.problems(pb.TrainConfig(local_epochs=5, batch_size=64, learning_rate=10)) == []


def test_the_bundles_policy_file_is_used_when_nothing_is_given(tmp_path: Path) -> None:
    bundle = bundle_with_policy(
        tmp_path,
        'task = "synthetic"\nmax_epochs = 5\n[task_options]\nmax_samples = 40\n',
    )
    policy = policy_of(PolicySettings(), bundle)
    assert policy.identity == TaskIdentity.of("synthetic", {"max_samples": 40})
    assert policy.bounds.max_epochs == 5


def test_settings_given_explicitly_win_over_the_bundle_and_options_follow_their_task(
    tmp_path: Path,
) -> None:
    bundle = bundle_with_policy(
        tmp_path, 'task = "synthetic"\nmax_epochs = 5\n[task_options]\nmax_samples = 40\n'
    )
    policy = policy_of(PolicySettings(task="digits", max_epochs=9), bundle)
    assert policy.identity == TaskIdentity.of("digits", {})  # not synthetic's options
    assert policy.bounds.max_epochs == 9


def test_a_bad_policy_file_is_one_line_naming_it(tmp_path: Path) -> None:
    bundle = bundle_with_policy(tmp_path, "max_epoch = 5\n")
    with pytest.raises(ConfigError, match=r"policy.toml: max_epoch: unknown setting"):
        policy_of(PolicySettings(), bundle)


def test_options_without_a_task_are_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text("insecure = true\nserver = 'h:1'\n[task_options]\nhidden = 32\n")
    with pytest.raises(ConfigError, match="set task too"):
        load_config(ClientConfig, {}, config, environ={})


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """The CLI configures structlog for its own stderr: undo it for the tests after."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("cli_logging")
@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--task", "no_such_module:Task"], "cannot import 'no_such_module'"),
        (["--task", "synthetic", "--config", "{config}"], "no option 'hidden'"),
        (["--min-batch", "9", "--max-batch", "8"], "min_batch: 9 is above"),
    ],
)
def test_a_bad_local_policy_exits_2_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], phrase: str
) -> None:
    config = tmp_path / "client.toml"
    config.write_text("[task_options]\nhidden = 32\n")
    argv = ["--insecure", "--server", "127.0.0.1:1", "--out", str(tmp_path / "run")]
    argv += [arg.format(config=config) for arg in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fl-client: error: ") and phrase in err[-1], err


def test_a_client_may_refuse_scaffold_and_out_of_bounds_optimizers_before_joining() -> None:
    policy = policy_of(
        PolicySettings(allow_control_variates=False, max_sgd_momentum=0.5, allow_adam=False),
        None,
    )
    with pytest.raises(PolicyError, match="allow_control_variates is off"):
        policy.admit(job("synthetic", {}, control_variates=True))
    fast = pb.TrainConfig(local_epochs=1, batch_size=32, learning_rate=0.1, momentum=0.9)
    with pytest.raises(PolicyError, match=r"momentum 0.9 not in \[0, 0.5\]"):
        policy.admit(job("synthetic", {}, train=fast))
    adam = pb.TrainConfig(local_epochs=1, batch_size=32, learning_rate=0.1, optimizer="adam")
    with pytest.raises(PolicyError, match="optimizer adam is not allowed"):
        policy.admit(job("synthetic", {}, train=adam))
    assert not policy_of(PolicySettings(), None).admit(job("synthetic", {})).local
