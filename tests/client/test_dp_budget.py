"""A silo's record-level DP-SGD in the client's protocol: policy, budget file, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
import torch

from fedsilo.client.audit import AuditLog
from fedsilo.client.dp_budget import RecordDpSettings, SiloBudget, state_path
from fedsilo.client.policy import ClientPolicy, PolicySettings, policy_of
from fedsilo.client.protocol import ClientProtocol, LocalSettings
from fedsilo.common.errors import ConfigError, PolicyError, PrivacyBudgetSpentError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.task_identity import TaskIdentity
from fedsilo.tasks.builtin.synthetic import SyntheticTask
from fedsilo.tasks.privacy_budget import DpSgdPolicy, PrivacyBudget, plan_round
from tests.client.helpers import OPTIONS, TRAIN, Driven, init_message
from tests.wire_helpers import encode_state

DELTA = 1e-5


def driven(tmp_path: Path, dp: DpSgdPolicy | None, audit: bool = True) -> Driven:
    """A client protocol whose policy is ``dp``, with its state folder in ``tmp_path``."""
    out = Driven()
    local = LocalSettings(policy=ClientPolicy(dp=dp), state_dir=tmp_path)
    log = AuditLog(tmp_path / "audit.jsonl", "org-a") if audit else None
    out.protocol = ClientProtocol("org-a", None, local, structlog.get_logger(), log)
    out.protocol.start_session(out.raw.append)
    return out


def sync(round_number: int, client: Driven) -> pb.ServerMessage:
    header, (data,), checksum = encode_state(client.own_state(), 1 << 20)
    header.inline.data, header.inline.checksum = data, checksum
    return pb.ServerMessage(sync_model=pb.SyncModel(round=round_number, train=TRAIN, model=header))


def ready(client: Driven) -> pb.Ready:
    (sent,) = client.take()
    return sent.ready


def send_model(client: Driven) -> pb.SendModel:
    (sent,) = client.take()
    return sent.send_model


def test_record_dp_settings_state_a_dp_sgd_policy_or_none() -> None:
    assert RecordDpSettings().dp_policy() is None
    policy = RecordDpSettings(record_dp_epsilon=3, record_dp_clip_norm=0.5).dp_policy()
    assert policy == DpSgdPolicy(delta=DELTA, max_grad_norm=0.5, epsilon=3.0)
    noise_only = RecordDpSettings(record_dp_noise=1.2).dp_policy()
    assert noise_only is not None and noise_only.noise_multiplier == 1.2
    assert noise_only.epsilon is None


def test_the_bundles_policy_toml_sets_dp_and_explicit_settings_win(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text("record_dp_epsilon = 8.0\nrecord_dp_delta = 1e-6\n")
    from_bundle = policy_of(PolicySettings(), tmp_path).dp
    assert from_bundle is not None and (from_bundle.epsilon, from_bundle.delta) == (8.0, 1e-6)
    explicit = policy_of(PolicySettings(record_dp_epsilon=2.0), tmp_path).dp
    assert explicit is not None and (explicit.epsilon, explicit.delta) == (2.0, 1e-6)


def test_a_job_that_requires_dp_is_refused_by_a_client_without_it(tmp_path: Path) -> None:
    client = driven(tmp_path, None)
    with pytest.raises(PolicyError, match="requires record-level DP-SGD"):
        client.protocol.handle(init_message(require_dp=True))
    (sent,) = client.take()
    assert sent.error.code == pb.POLICY_MISMATCH


def test_without_dp_ready_declares_none_and_updates_carry_no_epsilon(tmp_path: Path) -> None:
    client = driven(tmp_path, None)
    client.protocol.handle(init_message())
    assert not ready(client).HasField("record_dp")
    client.protocol.handle(sync(1, client))
    assert not send_model(client).metrics.HasField("dp_epsilon")
    assert not state_path(tmp_path, 1).exists()


def test_epsilon_is_charged_saved_and_reported_before_the_update_leaves(tmp_path: Path) -> None:
    policy = DpSgdPolicy(delta=DELTA, max_grad_norm=1.0, noise_multiplier=1.0)
    client = driven(tmp_path, policy)
    client.protocol.handle(init_message(require_dp=True))
    declared = ready(client).record_dp
    assert (declared.noise_multiplier, declared.max_grad_norm, declared.delta) == (1.0, 1.0, DELTA)
    assert declared.target_epsilon == 0 and declared.epsilon_spent == 0
    client.protocol.handle(sync(1, client))
    epsilon = send_model(client).metrics.dp_epsilon
    saved = json.loads(state_path(tmp_path, 1).read_text())
    assert saved["job"] == {
        "job_id": 1,
        "seed": 0,
        "task_hash": init_message().init_config.job.task_hash,
    }
    examples = client.protocol.data.train_examples  # type: ignore[union-attr]
    plan = plan_round(examples, TRAIN.batch_size, TRAIN.local_epochs)
    assert saved["budget"]["history"] == [[1.0, plan.sample_rate, plan.steps]]
    rows = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert rows[-1]["event"] == "update_sent"
    assert rows[-1]["record_dp"]["epsilon"] == epsilon > 0


def test_a_restarted_client_reloads_the_spend_and_keeps_adding_to_it(tmp_path: Path) -> None:
    policy = DpSgdPolicy(delta=DELTA, max_grad_norm=1.0, noise_multiplier=1.0)
    first = driven(tmp_path, policy, audit=False)
    first.protocol.handle(init_message())
    first.take()
    first.protocol.handle(sync(1, first))
    after_one = send_model(first).metrics.dp_epsilon
    second = driven(tmp_path, policy, audit=False)  # a new process: nothing kept in memory
    second.protocol.handle(init_message())
    assert ready(second).record_dp.epsilon_spent == after_one
    second.protocol.handle(sync(1, second))  # the server redoes the round: charged again
    after_two = send_model(second).metrics.dp_epsilon
    examples = second.protocol.data.train_examples  # type: ignore[union-attr]
    fresh = SiloBudget.open(policy, init_message().init_config.job, examples, None)
    fresh.charge(1, _report(fresh, examples))
    assert fresh.epsilon == pytest.approx(after_one, rel=1e-12)
    fresh.charge(2, _report(fresh, examples))
    assert fresh.epsilon == pytest.approx(after_two, rel=1e-12) and after_two > after_one


def _report(budget: SiloBudget, examples: int):  # type: ignore[no-untyped-def]
    from fedsilo.tasks.interface import DpSgdReport

    plan = plan_round(examples, TRAIN.batch_size, TRAIN.local_epochs)
    return DpSgdReport(budget.budget.noise_multiplier, 1.0, plan.sample_rate, plan.steps)


def test_the_client_leaves_before_a_round_past_its_budget_and_trains_nothing(
    tmp_path: Path,
) -> None:
    examples = SyntheticTask(**OPTIONS).load_data(0, 0, None).train_examples  # client id 0
    plan = plan_round(examples, TRAIN.batch_size, TRAIN.local_epochs)
    noise_only = DpSgdPolicy(delta=DELTA, max_grad_norm=1.0, noise_multiplier=1.0)
    one_round = PrivacyBudget(noise_only, 1.0).epsilon_after(plan)
    policy = DpSgdPolicy(
        delta=DELTA, max_grad_norm=1.0, noise_multiplier=1.0, epsilon=one_round * 1.2
    )
    client = driven(tmp_path, policy)
    client.protocol.handle(init_message())
    assert ready(client).record_dp.target_epsilon == one_round * 1.2
    client.protocol.handle(sync(1, client))
    assert send_model(client).metrics.dp_epsilon == pytest.approx(one_round, rel=1e-12)
    before = {k: v.clone() for k, v in client.own_state().items()}
    with pytest.raises(PrivacyBudgetSpentError, match="leaving the job before round 2"):
        client.protocol.handle(sync(2, client))
    (sent,) = client.take()
    assert sent.error.code == pb.PRIVACY_BUDGET_SPENT
    assert all(torch.equal(before[k], v) for k, v in client.own_state().items())
    # a client restarted with the spent budget leaves before it says Ready
    again = driven(tmp_path, policy)
    with pytest.raises(PrivacyBudgetSpentError, match="before its next round"):
        again.protocol.handle(init_message())
    (sent,) = again.take()
    assert sent.error.code == pb.PRIVACY_BUDGET_SPENT


def test_a_budget_file_of_another_job_or_policy_is_refused_at_join(tmp_path: Path) -> None:
    policy = DpSgdPolicy(delta=DELTA, max_grad_norm=1.0, noise_multiplier=1.0)
    client = driven(tmp_path, policy)
    client.protocol.handle(init_message())
    client.take()
    other = driven(tmp_path, policy)
    with pytest.raises(ConfigError, match="belongs to another job"):
        other.protocol.handle(init_message(seed=7))
    (sent,) = other.take()
    assert sent.error.code == pb.UNSUPPORTED_CONFIG
    stricter = driven(tmp_path, DpSgdPolicy(delta=DELTA, max_grad_norm=0.5, noise_multiplier=1.0))
    with pytest.raises(ConfigError, match="different DP policy"):
        stricter.protocol.handle(init_message())


def test_a_budget_that_no_noise_can_meet_refuses_the_job(tmp_path: Path) -> None:
    client = driven(tmp_path, DpSgdPolicy(delta=DELTA, max_grad_norm=1.0, epsilon=1e-6))
    with pytest.raises(ConfigError, match="cannot be met"):
        client.protocol.handle(init_message())
    (sent,) = client.take()
    assert sent.error.code == pb.UNSUPPORTED_CONFIG


def pinned(tmp_path: Path, task: str, dp: DpSgdPolicy) -> Driven:
    """A client running its operator's own task ``task`` with the synthetic task's options."""
    out = Driven()
    policy = ClientPolicy.pinned(f"tests.client.own_loop_task:{task}", OPTIONS, dp=dp)
    local = LocalSettings(policy=policy, state_dir=tmp_path)
    out.protocol = ClientProtocol("org-a", None, local, structlog.get_logger())
    out.protocol.start_session(out.raw.append)
    return out


def own_task_init(task: str) -> pb.ServerMessage:
    message = init_message()
    identity = TaskIdentity.of(f"tests.client.own_loop_task:{task}", OPTIONS)
    job = message.init_config.job
    job.task, job.task_options_json, job.task_hash = (
        identity.name,
        identity.options_json,
        identity.hash,
    )
    return message


def test_a_users_own_loop_with_make_private_is_charged_like_the_built_in_one(
    tmp_path: Path,
) -> None:
    policy = DpSgdPolicy(delta=DELTA, max_grad_norm=1.0, noise_multiplier=1.0)
    client = pinned(tmp_path, "OwnLoopTask", policy)
    client.protocol.handle(own_task_init("OwnLoopTask"))
    client.take()
    client.protocol.handle(sync(1, client))
    epsilon = send_model(client).metrics.dp_epsilon
    examples = client.protocol.data.train_examples  # type: ignore[union-attr]
    plan = plan_round(examples, TRAIN.batch_size, TRAIN.local_epochs)
    assert epsilon == pytest.approx(PrivacyBudget(policy, 1.0).epsilon_after(plan), rel=1e-12)


def test_a_task_that_trains_without_dp_sgd_sends_nothing(tmp_path: Path) -> None:
    client = pinned(
        tmp_path, "NoDpTask", DpSgdPolicy(delta=DELTA, max_grad_norm=1.0, noise_multiplier=1.0)
    )
    client.protocol.handle(own_task_init("NoDpTask"))
    client.take()
    with pytest.raises(ConfigError, match="trained without DP-SGD"):
        client.protocol.handle(sync(1, client))
    (sent,) = client.take()  # the Error only: no SendModel
    assert sent.error.code == pb.UNSUPPORTED_CONFIG
