"""What a client holds once a JobConfig is admitted: job, task, model, data, codec, together.

Also the checks of a JobConfig that are not policy (can this client apply it at all) and
whether a JobConfig continues the job the client is already in.

``Joined`` replaces six fields that were set at the same moment and were each None before it:
a client is either not in a job (``None``) or in one with all of these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from fedsilo.client.control_variates import FOLDER, ControlVariateStore
from fedsilo.client.dp_budget import SiloBudget
from fedsilo.client.policy import AdmittedTask, ClientPolicy
from fedsilo.client.secagg_client import SecAggKeys
from fedsilo.client.task_failure import task_code
from fedsilo.common import control_variates
from fedsilo.common.compression import ClientCompressor, Compression
from fedsilo.common.errors import ConfigError, PolicyError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import specs_of
from fedsilo.common.task_identity import TaskIdentity
from fedsilo.common.wire import MAX_CHUNK_SIZE
from fedsilo.tasks import LocalData, Task, TrainConfig, TrainResult
from fedsilo.tasks.loading import instantiate_task

SharedModels = dict[tuple[object, ...], torch.nn.Module]


class RoundTrainer(Protocol):
    """Trains a round somewhere other than in the client's own process (``client/ranks.py``)."""

    def train(self, joined: Joined, round_number: int, config: TrainConfig) -> TrainResult:
        """Train ``joined.model`` in place; raise LocalTrainingError if that fails."""


@dataclass(frozen=True)
class LocalSettings:
    """What the organisation decides for itself, never the server."""

    partition: int | None = None
    data: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    policy: ClientPolicy = field(default_factory=ClientPolicy)
    # Only for clients that never work concurrently (fl-sim): every round overwrites all
    # weights before use, so one model per task can serve them all.
    shared_models: SharedModels | None = None
    # The client's run folder, where it keeps state across restarts (its DP-SGD budget,
    # SCAFFOLD's control variates); None: in memory only.
    state_dir: Path | None = None
    # Secure aggregation: the certificate key round keys are signed with, and the CA.
    secagg_keys: SecAggKeys | None = None
    # fl-client --nproc-per-node N > 1: the round's training runs on N local processes.
    ranks: RoundTrainer | None = None


@dataclass
class Joined:
    """One client's part in one job."""

    client_id: int
    job: pb.JobConfig
    identity: TaskIdentity
    task: Task
    model: torch.nn.Module
    data: LocalData
    # Per client, never per (shared) model: it holds this client's top-k residual.
    compressor: ClientCompressor
    partition: int
    # The round's received weights, for the update's norm and the lossy codecs: kept between
    # rounds and overwritten in place (fresh pages for a big model cost more than the copy).
    reference: dict[str, torch.Tensor] | None = None
    # Record-level DP-SGD of this job, when the policy asks for it.
    budget: SiloBudget | None = None
    # SCAFFOLD: this client's control variates by round (jobs with control_variates only).
    control: ControlVariateStore | None = None

    def is_same_job(self, client_id: int, job: pb.JobConfig, identity: TaskIdentity) -> bool:
        """Whether an InitConfig continues this job (a reconnect), so task and data are kept."""
        return (
            self.client_id == client_id
            and self.job.job_id == job.job_id
            and self.job.seed == job.seed
            and self.job.control_variates == job.control_variates
            and self.identity == identity
        )


def job_compression(job: pb.JobConfig) -> Compression:
    """Return the job's update codec; raise ConfigError for a job this client cannot apply."""
    try:
        setting = Compression.from_proto(job.compression)
    except ConfigError as exc:
        raise ConfigError(f"cannot apply the job's update compression: {exc}") from exc
    if not 1 <= job.chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError(
            f"chunk_size {job.chunk_size} is not in 1..{MAX_CHUNK_SIZE} (this client's cap)"
        )
    if not (math.isfinite(job.heartbeat_seconds) and job.heartbeat_seconds >= 0):
        raise ConfigError(f"heartbeat_seconds {job.heartbeat_seconds} is not a number >= 0")
    return setting


def check_same_task(previous: Joined | None, job: pb.JobConfig, admitted: AdmittedTask) -> None:
    """Raise PolicyError when a job this client is in comes back with another task."""
    if previous is None or previous.job.job_id != job.job_id:
        return
    if previous.identity != admitted.identity:
        raise PolicyError(
            f"the server changed job {job.job_id}'s task mid-job, from "
            f"{previous.identity.describe()} to {admitted.identity.describe()}"
        )


def join(
    previous: Joined | None,
    init: pb.InitConfig,
    admitted: AdmittedTask,
    setting: Compression,
    local: LocalSettings,
) -> tuple[Joined, bool]:
    """Return the client's part in the job, and whether it continues ``previous``.

    After a reconnect to the same job, task, model and data are kept (and the codec's
    residual, unless the codec changed, and the DP budget); otherwise the admitted task is
    built anew. Raises TaskLoadError, or ConfigError for a DP budget that cannot be opened.
    """
    if previous is not None and previous.is_same_job(init.client_id, init.job, admitted.identity):
        previous.job = init.job
        if previous.compressor.setting != setting:
            previous.compressor = ClientCompressor(setting)
        return previous, True
    return build(init, admitted, setting, local), False


def build(
    init: pb.InitConfig, admitted: AdmittedTask, setting: Compression, local: LocalSettings
) -> Joined:
    """Build the task the policy admitted, its model and this client's data."""
    job = init.job
    task = instantiate_task(admitted.task_class, admitted.options, admitted.identity.name)
    shared = local.shared_models
    partition = local.partition if local.partition is not None else init.client_id
    with task_code("building its model and loading its data"):
        if shared is None:
            model = task.build_model(job.seed)
        else:  # simulated clients that work one at a time can share one set of weights
            key = (job.job_id, admitted.identity.hash, job.seed)
            if key not in shared:
                shared[key] = task.build_model(job.seed)
            model = shared[key]
        data = task.load_data(partition, job.seed, local.data)
    dp = local.policy.dp
    budget = None
    if dp is not None:  # outside task_code: a budget that cannot be opened is a ConfigError
        budget = SiloBudget.open(dp, job, data.train_examples, local.state_dir)
    control = None
    if job.control_variates:
        folder = None if local.state_dir is None else local.state_dir / FOLDER / f"job-{job.job_id}"
        specs = control_variates.controlled(specs_of(model.state_dict()))
        control = ControlVariateStore(specs, folder)
    return Joined(
        client_id=init.client_id,
        job=job,
        identity=admitted.identity,
        task=task,
        model=model,
        data=data,
        compressor=ClientCompressor(setting),
        partition=partition,
        budget=budget,
        control=control,
    )
