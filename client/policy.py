"""The organisation's word on what its client runs: which task, and within which bounds.

The operator states the task (``--task``, with its ``task_options`` from a config file or the
bundle's ``policy.toml``) and bounds on what a server may ask of local training. The task is
resolved from that local setting only, once, at start-up. A server's ``JobConfig`` is admitted
when its task identity (name + canonical options + hash, ``common/task_identity.py``) equals the
local one and its training settings and round count are in bounds; otherwise ``PolicyError``
says what differs, before anything is imported or trained.

Without a local task the client takes the server's task only if it is a built-in name (one of
fedsilo's own modules, never a dotted path), with the server's options checked against that
task's constructor: ``fl-client --server HOST:PORT --insecure`` stays a one-line quick start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, model_validator

from fedsilo.client.dp_budget import RECORD_DP_FIELDS, RecordDpSettings
from fedsilo.common.bundles import POLICY_FILE, read_bundle_policy
from fedsilo.common.errors import ConfigError, PolicyError, TaskLoadError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.settings import describe_validation_error
from fedsilo.common.task_identity import (
    TaskIdentity,
    TaskIdentityError,
    describe_difference,
)
from fedsilo.tasks.loading import (
    BUILTIN_LOCAL_OPTIONS,
    BUILTIN_TASKS,
    check_task_options,
    resolve_builtin_task,
    resolve_task_class,
)
from fedsilo.tasks.privacy_budget import DpSgdPolicy

OptionValue = str | int | float | bool


class PolicySettings(RecordDpSettings):
    """The policy's settings, as flags, FEDSILO_* variables, a config file or ``policy.toml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str | None = Field(
        None,
        min_length=1,
        description="The task this client runs, a built-in name or package.module:Name; the "
        "server must ask for exactly it (default: any built-in task the server names).",
    )
    task_options: dict[str, OptionValue] = Field(
        default_factory=dict,
        description="Options of the local task (config file or policy.toml only).",
    )
    max_epochs: int = Field(1000, ge=1, description="Most local epochs a round may ask for.")
    min_batch: int = Field(1, ge=1, description="Smallest batch size a round may ask for.")
    max_batch: int = Field(65536, ge=1, description="Largest batch size a round may ask for.")
    max_lr: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="Largest learning rate a round may ask for."
    )
    max_rounds: int = Field(100_000, ge=1, description="Most rounds a job may have.")
    max_sgd_momentum: float = Field(
        0.999, ge=0, lt=1, description="Largest local SGD momentum a round may ask for."
    )
    max_decay: float = Field(
        1.0, ge=0, allow_inf_nan=False, description="Largest weight decay a round may ask for."
    )
    allow_adam: bool = Field(True, description="Whether a round may ask for the Adam optimizer.")
    allow_control_variates: bool = Field(
        True,
        description="Whether a job may use SCAFFOLD (a model-sized control variate kept in the "
        "run folder, and sent with each update).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PolicySettings:
        if self.task_options and self.task is None:
            raise ValueError("task_options: options belong to a local task; set task too")
        if self.min_batch > self.max_batch:
            raise ValueError(f"min_batch: {self.min_batch} is above max_batch {self.max_batch}")
        return self


_BOUNDS = (
    "max_epochs",
    "min_batch",
    "max_batch",
    "max_lr",
    "max_rounds",
    "max_sgd_momentum",
    "max_decay",
    "allow_adam",
    "allow_control_variates",
)
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainingBounds:
    """What a server may ask of local training, at most (or at least)."""

    max_epochs: int = 1000
    min_batch: int = 1
    max_batch: int = 65536
    max_lr: float = 10.0
    max_rounds: int = 100_000
    max_sgd_momentum: float = 0.999
    max_decay: float = 1.0
    allow_adam: bool = True
    allow_control_variates: bool = True

    def problems(self, train: pb.TrainConfig) -> list[str]:
        """Return what in ``train`` is out of bounds, one phrase each (empty: all in bounds)."""
        found = []
        if not 1 <= train.local_epochs <= self.max_epochs:
            found.append(f"local_epochs {train.local_epochs} not in 1..{self.max_epochs}")
        if not self.min_batch <= train.batch_size <= self.max_batch:
            found.append(f"batch_size {train.batch_size} not in {self.min_batch}..{self.max_batch}")
        lr = train.learning_rate
        if not (math.isfinite(lr) and 0 < lr <= self.max_lr):
            found.append(f"learning_rate {lr:g} not in (0, {self.max_lr:g}]")
        mu = train.proximal_mu
        if not (math.isfinite(mu) and mu >= 0):
            found.append(f"proximal_mu {mu:g} is not a finite number >= 0")
        return found + self._optimizer_problems(train)

    def _optimizer_problems(self, train: pb.TrainConfig) -> list[str]:
        found = []
        optimizer = train.optimizer or "sgd"
        if optimizer not in OPTIMIZERS:
            found.append(f"optimizer {_shown(optimizer)} is not one of {', '.join(OPTIMIZERS)}")
        elif optimizer == "adam" and not self.allow_adam:
            found.append("optimizer adam is not allowed (allow_adam is off)")
        momentum = train.momentum
        if not (math.isfinite(momentum) and 0 <= momentum <= self.max_sgd_momentum):
            found.append(f"momentum {momentum:g} not in [0, {self.max_sgd_momentum:g}]")
        if train.nesterov and not momentum > 0:
            found.append("nesterov needs momentum > 0")
        if optimizer == "adam" and (momentum or train.nesterov):
            found.append("momentum and nesterov are SGD's, not Adam's")
        decay = train.weight_decay
        if not (math.isfinite(decay) and 0 <= decay <= self.max_decay):
            found.append(f"weight_decay {decay:g} not in [0, {self.max_decay:g}]")
        return found

    def check_training(self, train: pb.TrainConfig, what: str) -> None:
        """Raise PolicyError naming every setting of ``train`` that is out of bounds."""
        found = self.problems(train)
        if found:
            raise PolicyError(f"{what} are out of this client's bounds: " + "; ".join(found))

    def check_rounds(self, rounds: int) -> None:
        """Raise PolicyError if a job of ``rounds`` rounds is more than the policy allows."""
        if rounds > self.max_rounds:
            raise PolicyError(
                f"the job has {rounds} rounds, this client's max_rounds is {self.max_rounds}"
            )


@dataclass(frozen=True)
class AdmittedTask:
    """The task a JobConfig was admitted for: the class to build, with which options."""

    identity: TaskIdentity
    task_class: type[Any]
    options: dict[str, OptionValue]
    local: bool  # the client's own task (True) or a built-in one the server named


@dataclass(frozen=True)
class ClientPolicy:
    """A client's policy, resolved: its own task (class imported at start-up) or none, bounds."""

    identity: TaskIdentity | None = None
    task_class: type[Any] | None = None
    options: dict[str, OptionValue] = field(default_factory=dict)
    bounds: TrainingBounds = field(default_factory=TrainingBounds)
    dp: DpSgdPolicy | None = None  # record-level DP-SGD of every round (client/dp_budget.py)

    @classmethod
    def pinned(
        cls,
        task: str,
        options: Mapping[str, OptionValue],
        bounds: TrainingBounds | None = None,
        dp: DpSgdPolicy | None = None,
    ) -> ClientPolicy:
        """Return a policy running ``task`` with ``options``; resolve it now (TaskLoadError)."""
        task_class = resolve_task_class(task)
        check_task_options(task_class, options, task)
        try:
            identity = TaskIdentity.of(task, options)
        except TaskIdentityError as exc:
            raise ConfigError(f"task_options: {exc}") from exc
        return cls(identity, task_class, dict(options), bounds or TrainingBounds(), dp)

    @property
    def mode(self) -> str:
        """``local`` (the operator's own task) or ``builtin`` (built-in tasks the server names)."""
        return "local" if self.identity is not None else "builtin"

    def admit(self, job: pb.JobConfig) -> AdmittedTask:
        """Check a JobConfig against the policy; return the task to build, or raise PolicyError.

        The task's name is checked first, then its options and hash, then the round count and
        the training settings; only then is a built-in task's module imported (nothing else
        is imported here: the local task was resolved at start-up).
        """
        ours = self.identity
        if ours is not None and job.task != ours.name:
            raise PolicyError(
                f"the server asks for task {_shown(job.task)}, this client runs {ours.name!r}"
            )
        if ours is None and job.task not in BUILTIN_TASKS:
            raise PolicyError(
                f"the server asks for task {_shown(job.task)}, which is not built in; this "
                "client runs only built-in tasks unless its operator names one (--task)"
            )
        try:
            theirs = TaskIdentity.from_wire(job.task, job.task_options_json, job.task_hash)
        except TaskIdentityError as exc:
            raise PolicyError(f"the server's task {job.task!r}: {exc}") from None
        if ours is not None and theirs != ours:
            raise PolicyError(describe_difference(theirs, ours))
        self.bounds.check_rounds(job.rounds)
        self.bounds.check_training(job.train, "the job's training settings")
        if job.require_dp and self.dp is None:
            raise PolicyError(
                "the job requires record-level DP-SGD (--require-dp) and this client's policy "
                "sets none (record_dp_epsilon or record_dp_noise)"
            )
        if job.control_variates and not self.bounds.allow_control_variates:
            raise PolicyError(
                "the job uses SCAFFOLD's control variates; allow_control_variates is off"
            )
        if ours is None:
            return _admit_builtin(theirs)
        assert self.task_class is not None
        return AdmittedTask(ours, self.task_class, dict(self.options), True)


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 100 else repr(name[:97] + "...")


def _admit_builtin(theirs: TaskIdentity) -> AdmittedTask:
    options = theirs.options
    local_only = sorted(set(options) & BUILTIN_LOCAL_OPTIONS.get(theirs.name, frozenset()))
    if local_only:
        raise PolicyError(
            f"the server sets {', '.join(map(repr, local_only))} of task {theirs.name!r}, which "
            "only this client's operator may set (--task with task_options)"
        )
    try:
        task_class = resolve_builtin_task(theirs.name)
        check_task_options(task_class, options, theirs.name)
    except TaskLoadError as exc:
        raise PolicyError(str(exc)) from None
    return AdmittedTask(theirs, task_class, options, False)


def policy_of(settings: PolicySettings, bundle: Path | None) -> ClientPolicy:
    """Resolve the policy: settings given explicitly win over the bundle's ``policy.toml``.

    ``task`` and ``task_options`` go together: both from the settings when either was given
    there, else both from the bundle. Raises ConfigError or TaskLoadError (exit 2).
    """
    merged = settings
    table = read_bundle_policy(bundle) if bundle is not None else None
    if table is not None:
        try:
            from_bundle = PolicySettings.model_validate(table)
        except ValidationError as exc:
            detail = describe_validation_error(exc)
            raise ConfigError(f"{bundle}/{POLICY_FILE}: {detail}") from exc
        merged = _merge(settings, from_bundle)
    bounds = TrainingBounds(**{name: getattr(merged, name) for name in _BOUNDS})
    try:
        dp = merged.dp_policy()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
    if merged.task is None:
        return ClientPolicy(bounds=bounds, dp=dp)
    return ClientPolicy.pinned(merged.task, merged.task_options, bounds, dp)


def _merge(explicit: PolicySettings, from_bundle: PolicySettings) -> PolicySettings:
    given = explicit.model_fields_set
    values: dict[str, Any] = {
        name: getattr(explicit if name in given else from_bundle, name)
        for name in (*_BOUNDS, *RECORD_DP_FIELDS)
    }
    source = explicit if given & {"task", "task_options"} else from_bundle
    values["task"], values["task_options"] = source.task, source.task_options
    try:
        return PolicySettings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
