"""What a client holds once a JobConfig is admitted: job, task, model, data, codec, together.

``Joined`` replaces six fields that were set at the same moment and were each None before it:
a client is either not in a job (``None``) or in one with all of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedsilo.client.policy import AdmittedTask, ClientPolicy
from fedsilo.common.compression import ClientCompressor, Compression
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.task_identity import TaskIdentity
from fedsilo.tasks import LocalData, Task
from fedsilo.tasks.loading import instantiate_task

SharedModels = dict[tuple[object, ...], torch.nn.Module]


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

    def is_same_job(self, client_id: int, job: pb.JobConfig, identity: TaskIdentity) -> bool:
        """Whether an InitConfig continues this job (a reconnect), so task and data are kept."""
        return (
            self.client_id == client_id
            and self.job.job_id == job.job_id
            and self.job.seed == job.seed
            and self.identity == identity
        )


def join(
    init: pb.InitConfig, admitted: AdmittedTask, setting: Compression, local: LocalSettings
) -> Joined:
    """Build the task the policy admitted, its model and this client's data."""
    job = init.job
    task = instantiate_task(admitted.task_class, admitted.options, admitted.identity.name)
    shared = local.shared_models
    if shared is None:
        model = task.build_model(job.seed)
    else:  # simulated clients that work one at a time can share one set of weights
        key = (job.job_id, admitted.identity.hash, job.seed)
        if key not in shared:
            shared[key] = task.build_model(job.seed)
        model = shared[key]
    partition = local.partition if local.partition is not None else init.client_id
    data = task.load_data(partition, job.seed, local.data)
    return Joined(
        client_id=init.client_id,
        job=job,
        identity=admitted.identity,
        task=task,
        model=model,
        data=data,
        compressor=ClientCompressor(setting),
        partition=partition,
    )
