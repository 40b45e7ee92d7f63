"""A client's local work in a round: evaluate, train, encode the update; and what it records.

Pure of protocol state: each function takes the joined job and returns what to send and what
to write in ``audit.jsonl``, so ``client/protocol.py`` only decides when.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from fedsilo.client import control_variates as scaffold
from fedsilo.client.dp_budget import SiloBudget
from fedsilo.client.joined import Joined, RoundTrainer
from fedsilo.client.policy import ClientPolicy
from fedsilo.client.resume import PendingUpload
from fedsilo.client.task_failure import task_code
from fedsilo.common import control_variates
from fedsilo.common.errors import ConfigError
from fedsilo.common.metric_names import metrics_problem
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import header_of, specs_of
from fedsilo.common.tensor_checks import floating_copy, update_norm
from fedsilo.common.wire import PROTOCOL_VERSION, inline_tensors
from fedsilo.tasks import Evaluation, TrainConfig, TrainResult
from fedsilo.tasks.interface import DpSgdConfig

Heartbeats = AbstractContextManager[None]


@dataclass(frozen=True)
class Upload:
    """A round's update, ready to go: its frames, its audit record and its log fields."""

    frames: pb.ClientMessage | Iterator[bytes]
    record: dict[str, Any]
    summary: dict[str, float]
    examples: int = 0  # what the update weighs
    # Under secure aggregation: the received weights (the update is made from them later).
    reference: dict[str, torch.Tensor] | None = None
    pending: PendingUpload | None = None  # a chunked update, which a new session may continue


@contextmanager
def on_device(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Run local work on the chosen device; the model lives on the CPU for the wire."""
    if device.type == "cpu":
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to("cpu")


def train_config(
    train: pb.TrainConfig,
    correction: dict[str, torch.Tensor] | None = None,
    privacy: DpSgdConfig | None = None,
) -> TrainConfig:
    """Return the Task's TrainConfig for a round's settings (SCAFFOLD's correction, DP-SGD's)."""
    return TrainConfig(
        local_epochs=train.local_epochs,
        batch_size=train.batch_size,
        learning_rate=train.learning_rate,
        seed=train.seed,
        proximal_mu=train.proximal_mu,
        optimizer=train.optimizer or "sgd",
        momentum=train.momentum,
        nesterov=train.nesterov,
        weight_decay=train.weight_decay,
        control_correction=correction,
        privacy=privacy,
    )


def train_round(
    joined: Joined,
    round_number: int,
    train: pb.TrainConfig,
    *,
    device: torch.device,
    heartbeats: Heartbeats,
    measure_norm: bool,
    masked: bool = False,
    ranks: RoundTrainer | None = None,
) -> Upload:
    """Evaluate the received model, train on it (here, or on ``ranks``), encode the update.

    ``masked`` (secure aggregation): the update is not encoded here; the SendModel carries the
    metrics only, and the received weights come back in ``reference`` for the masked upload.
    With control variates (SCAFFOLD: ``joined.control``, holding the server's c of the round),
    training is corrected by ``c - c_i``, and the update carries ``c_i+ - c_i`` after the
    codec's tensors; ``c_i+`` is saved before anything is sent.
    """
    model, compressor = joined.model, joined.compressor
    started = time.monotonic()
    # One copy of the received weights serves the codec's delta, the audit's update norm and
    # SCAFFOLD's drift.
    lossy = compressor.setting.codec != "none"
    store = joined.control
    reference = None
    if measure_norm or lossy or masked or store is not None:
        reference = floating_copy(model.state_dict(), into=joined.reference)
        joined.reference = reference
        compressor.remember_global(reference, copy=False)
    budget = joined.budget
    inputs = _control_inputs(store, ranks, round_number)
    config = train_config(
        train,
        inputs[2] if inputs is not None else None,
        budget.training(train.seed) if budget is not None else None,
    )
    with heartbeats:
        # The ranks' own failures are theirs (LocalTrainingError: the client leaves the round).
        with task_code(f"training in round {round_number}"), on_device(model, device):
            evaluation = joined.task.evaluate(model, joined.data)
            if ranks is None:
                result = joined.task.train(model, joined.data, config)
        if ranks is not None:  # the ranks put the model on their own devices
            result = ranks.train(joined, round_number, config)
    check_evaluation(evaluation)
    # Charged and saved before anything of the round leaves (raises past the budget).
    epsilon = budget.charge(round_number, result.privacy) if budget is not None else None
    seconds = time.monotonic() - started
    trained = model.state_dict()
    norm = update_norm(trained, reference) if measure_norm and reference is not None else None
    metrics = pb.LocalMetrics(
        train_loss=result.loss,
        train_seconds=seconds,
        evaluation=evaluation_message(evaluation),
        dp_epsilon=epsilon,
        local_steps=result.steps,
    )
    if masked:
        # Weight and update travel masked, later; the audit says so and the norm is of the delta.
        send = pb.ClientMessage(send_model=pb.SendModel(round=round_number, metrics=metrics))
        record = _record(round_number, "secagg", norm, result, seconds, evaluation)
        summary = _with_dp(record, _summary(result.loss, seconds, evaluation), budget)
        return Upload(send, record, summary, result.examples, reference)
    wire = compressor.encode(trained)
    if store is not None:
        assert inputs is not None and reference is not None
        wire.update(_control_change(joined, round_number, inputs, reference, result, train))
    specs = specs_of(wire)
    send = pb.ClientMessage(
        send_model=pb.SendModel(
            round=round_number,
            train_examples=result.examples,
            metrics=metrics,
            update=header_of(specs),
        )
    )
    frames: pb.ClientMessage | Iterator[bytes] = send
    pending = None
    inline = inline_tensors(list(wire.values()), joined.job.chunk_size)
    if inline is not None:
        send.send_model.update.inline.CopyFrom(inline)
    else:
        pending = PendingUpload(round_number, send, list(wire.values()), joined.job.chunk_size)
        frames = pending.frames()
    record = _record(round_number, compressor.setting.codec, norm, result, seconds, evaluation)
    record["bytes"] = sum(spec.nbytes for spec in specs)
    record["control_variates"] = store is not None
    summary = _with_dp(record, _summary(result.loss, seconds, evaluation), budget)
    return Upload(frames, record, summary, result.examples, pending=pending)


def _with_dp(
    record: dict[str, Any], summary: dict[str, float], budget: SiloBudget | None
) -> dict[str, float]:
    """Add the silo's DP-SGD budget, as charged for this round, to the audit and log fields."""
    if budget is not None:
        record["record_dp"] = budget.record()
        summary["dp_epsilon"] = round(budget.epsilon, 5)
    return summary


def _control_inputs(
    store: scaffold.ControlVariateStore | None, ranks: RoundTrainer | None, round_number: int
) -> tuple[scaffold.State, scaffold.State, scaffold.State] | None:
    """SCAFFOLD's (c, c_i, c - c_i) of the round, or None in a job without control variates."""
    if store is None:
        return None
    if ranks is not None:
        raise ConfigError(
            "SCAFFOLD's correction does not reach the ranks of --nproc-per-node; "
            "run this silo as one process for this job"
        )
    return scaffold.round_inputs(store, round_number)


def _control_change(
    joined: Joined,
    round_number: int,
    inputs: tuple[dict[str, torch.Tensor], ...],
    start: dict[str, torch.Tensor],
    result: TrainResult,
    train: pb.TrainConfig,
) -> dict[str, torch.Tensor]:
    """Save SCAFFOLD's ``c_i+`` of the round; return ``c_i+ - c_i`` under its wire names."""
    assert joined.control is not None
    server, own, _ = inputs
    new, delta = scaffold.next_variate(
        own,
        server,
        start,
        joined.model.state_dict(),
        steps=result.steps,
        learning_rate=train.learning_rate,
        parameters={name for name, _ in joined.model.named_parameters()},
    )
    joined.control.save(round_number, new)
    return control_variates.suffixed(delta, control_variates.DELTA_SUFFIX)


def _record(
    round_number: int,
    codec: str,
    norm: float | None,
    result: TrainResult,
    seconds: float,
    evaluation: Evaluation,
) -> dict[str, Any]:
    """An update's audit record (``bytes`` is added where they are known)."""
    return {
        "round": round_number,
        "codec": codec,
        "update_norm": norm,
        "train_examples": result.examples,
        "metrics": {
            "train_loss": result.loss,
            "train_seconds": seconds,
            "eval_examples": evaluation.examples,
            "eval_loss": evaluation.loss,
            "eval_accuracy": evaluation.accuracy,
            "eval_metrics": dict(evaluation.metrics),
            "local_steps": result.steps,
        },
    }


def _summary(loss: float, seconds: float, evaluation: Evaluation) -> dict[str, float]:
    return {
        "train_loss": round(loss, 5),
        "train_seconds": round(seconds, 3),
        "eval_accuracy": round(evaluation.accuracy, 5),
    }


def evaluate_final(joined: Joined, device: torch.device, heartbeats: Heartbeats) -> Evaluation:
    """Evaluate the final model on the local held-out data."""
    with heartbeats, task_code("evaluating the final model"), on_device(joined.model, device):
        evaluation = joined.task.evaluate(joined.model, joined.data)
    check_evaluation(evaluation)
    return evaluation


def check_evaluation(evaluation: Evaluation) -> None:
    """Raise ConfigError when the task's named metrics break the rule the server enforces."""
    problem = metrics_problem(evaluation.metrics)
    if problem is not None:
        raise ConfigError(f"the task's evaluation: {problem}")


def ready_message(joined: Joined) -> pb.ClientMessage:
    """Return the Ready that ends joining: example counts, and this silo's DP-SGD if any."""
    ready = pb.Ready(
        train_examples=joined.data.train_examples,
        test_examples=joined.data.test_examples,
        record_dp=joined.budget.announcement() if joined.budget is not None else None,
    )
    return pb.ClientMessage(ready=ready)


def evaluation_message(evaluation: Evaluation) -> pb.Evaluation:
    """Return the wire form of an evaluation."""
    return pb.Evaluation(
        examples=evaluation.examples,
        loss=evaluation.loss,
        accuracy=evaluation.accuracy,
        metrics={name: float(value) for name, value in evaluation.metrics.items()},
    )


def train_record(train: pb.TrainConfig) -> dict[str, Any]:
    """Return training settings as an audit field."""
    return {
        "local_epochs": train.local_epochs,
        "batch_size": train.batch_size,
        "learning_rate": train.learning_rate,
        "proximal_mu": train.proximal_mu,
        "optimizer": train.optimizer or "sgd",
        "momentum": train.momentum,
        "nesterov": train.nesterov,
        "weight_decay": train.weight_decay,
        "seed": train.seed,
    }


def join_record(joined: Joined, rejoined: bool, policy: ClientPolicy) -> dict[str, Any]:
    """Return what the client agreed to when it joined, as an audit record."""
    job = joined.job
    compression = job.compression
    bounds = policy.bounds
    return {
        "rejoined": rejoined,
        "protocol_version": PROTOCOL_VERSION,
        "task": {
            "name": joined.identity.name,
            "options": joined.identity.options,
            "hash": joined.identity.hash,
            "policy": policy.mode,
        },
        "seed": job.seed,
        "rounds": job.rounds,
        "chunk_size": job.chunk_size,
        "compression": {
            "codec": compression.codec or "none",
            "topk_fraction": compression.topk_fraction,
            "per_channel": compression.per_channel,
        },
        "training": {k: v for k, v in train_record(job.train).items() if k != "seed"},
        "bounds": {
            "max_epochs": bounds.max_epochs,
            "min_batch": bounds.min_batch,
            "max_batch": bounds.max_batch,
            "max_lr": bounds.max_lr,
            "max_rounds": bounds.max_rounds,
            "max_sgd_momentum": bounds.max_sgd_momentum,
            "max_decay": bounds.max_decay,
            "allow_adam": bounds.allow_adam,
            "allow_control_variates": bounds.allow_control_variates,
        },
        "control_variates": job.control_variates,
        "partition": joined.partition,
        "require_dp": job.require_dp,
        "record_dp": joined.budget.record() if joined.budget is not None else None,
        "train_examples": joined.data.train_examples,
        "test_examples": joined.data.test_examples,
    }
