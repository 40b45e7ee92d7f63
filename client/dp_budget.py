"""A silo's record-level DP-SGD in one job: its operator's settings, its budget, its state file.

The operator sets the policy locally (``record_dp_*`` flags, FEDSILO_* variables, the config
file or the bundle's ``policy.toml``); the server never sees more than ``RecordDp`` in Ready.
``SiloBudget`` is opened when the client joins (the noise multiplier planned for the job's
rounds, or the saved state of this job after a restart), asked before each round whether the
round fits (the client leaves the job, PRIVACY_BUDGET_SPENT, before one that does not), and
charged after training and before the update leaves; it is saved at once, atomically, in the
client's state folder (``dp-budget-job<ID>.json`` next to ``audit.jsonl``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedsilo.common.errors import ConfigError, FedsiloError, PrivacyBudgetSpentError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.tasks.interface import DpSgdConfig, DpSgdReport
from fedsilo.tasks.privacy_budget import DpSgdPolicy, PrivacyBudget, RoundPlan, plan_round

STATE_FORMAT = 1


class BudgetRefusalError(Exception):
    """The budget refuses a round: what to tell the server, and the error the client stops with.

    Raised before anything of the round leaves; ``ClientProtocol`` turns it into its one Error.
    """

    def __init__(self, code: int, reason: str, error: type[FedsiloError]) -> None:
        super().__init__(reason)
        self.code = code
        self.error = error


class RecordDpSettings(BaseModel):
    """The operator's record-level DP-SGD settings (part of the client's policy)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_dp_epsilon: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Record-level DP-SGD: this silo's epsilon budget for the whole job; the "
        "client leaves the job before a round that would spend more.",
    )
    record_dp_noise: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Record-level DP-SGD: noise multiplier z (noise std / clipping norm); "
        "default: the least that keeps the job's rounds within record_dp_epsilon.",
    )
    record_dp_delta: float = Field(
        1e-5, gt=0, lt=1, description="Record-level DP-SGD: delta of the silo's epsilon."
    )
    record_dp_clip_norm: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="Record-level DP-SGD: per-sample gradient clipping norm C.",
    )
    record_dp_reproducible: bool = Field(
        False,
        description="Record-level DP-SGD: seed noise and sampling from the server's training "
        "seed (research only: not private against the coordinator).",
    )

    def dp_policy(self) -> DpSgdPolicy | None:
        """Return the DP-SGD policy these settings state, or None when DP-SGD is off."""
        if self.record_dp_epsilon is None and self.record_dp_noise is None:
            return None
        return DpSgdPolicy(
            delta=self.record_dp_delta,
            max_grad_norm=self.record_dp_clip_norm,
            epsilon=self.record_dp_epsilon,
            noise_multiplier=self.record_dp_noise,
            reproducible=self.record_dp_reproducible,
        )


RECORD_DP_FIELDS = tuple(RecordDpSettings.model_fields)


def state_path(state_dir: Path, job_id: int) -> Path:
    """Return the file holding a job's budget in a client's state folder."""
    return state_dir / f"dp-budget-job{job_id}.json"


def _job_key(job: pb.JobConfig) -> dict[str, Any]:
    return {"job_id": job.job_id, "seed": job.seed, "task_hash": job.task_hash}


@dataclass
class SiloBudget:
    """One job's DP-SGD budget of this silo, and where it is saved (None: memory only)."""

    budget: PrivacyBudget
    path: Path | None
    job: dict[str, Any]
    train_examples: int

    @classmethod
    def open(
        cls, policy: DpSgdPolicy, job: pb.JobConfig, train_examples: int, state_dir: Path | None
    ) -> SiloBudget:
        """Return the job's saved budget, or a new one planned for its rounds (ConfigError)."""
        path = state_path(state_dir, job.job_id) if state_dir is not None else None
        key = _job_key(job)
        if path is not None and path.exists():
            return cls(_load(path, policy, key), path, key, train_examples)
        plan = _plan(train_examples, job.train)
        opened = cls(PrivacyBudget.plan(policy, job.rounds, plan), path, key, train_examples)
        opened.save()
        return opened

    @property
    def epsilon(self) -> float:
        """Return the epsilon spent so far in this job."""
        return self.budget.epsilon

    def check(self, which: str, train: pb.TrainConfig) -> None:
        """Raise BudgetRefusalError (PRIVACY_BUDGET_SPENT) if ``which`` round passes the budget."""
        target = self.budget.policy.epsilon
        plan = _plan(self.train_examples, train)
        if target is None or not self.budget.would_exceed(plan):
            return
        after = self.budget.epsilon_after(plan)
        raise BudgetRefusalError(
            pb.PRIVACY_BUDGET_SPENT,
            f"leaving the job before {which}: it would take this silo's record-level epsilon "
            f"from {self.epsilon:.4g} to {after:.4g}, past its budget {target:g} "
            f"(delta {self.budget.policy.delta:g})",
            PrivacyBudgetSpentError,
        )

    def training(self, seed: int) -> DpSgdConfig:
        """Return the DP-SGD settings of the next round (``seed`` used only if reproducible)."""
        return self.budget.dp_sgd_config(seed=seed)

    def charge(self, round_number: int, report: DpSgdReport | None) -> float:
        """Add a trained round, save, and return epsilon; refuse a round past the budget.

        BudgetRefusalError, before the update leaves: UNSUPPORTED_CONFIG if the task did not train
        with the budget's DP-SGD; PRIVACY_BUDGET_SPENT if the task's own loop took more steps
        than planned, so that this round crossed the budget (it is charged all the same, and
        nothing of it is sent).
        """
        target = self.budget.policy.epsilon
        before = self.epsilon
        try:
            epsilon = self.budget.record(report)
        except ConfigError as exc:
            raise BudgetRefusalError(
                pb.UNSUPPORTED_CONFIG, f"nothing sent: {exc}", ConfigError
            ) from exc
        self.save()
        if target is not None and epsilon > target:
            raise BudgetRefusalError(
                pb.PRIVACY_BUDGET_SPENT,
                f"round {round_number} took this silo's record-level epsilon from {before:.4g} "
                f"to {epsilon:.4g}, past its budget {target:g}: its update is not sent",
                PrivacyBudgetSpentError,
            )
        return epsilon

    def announcement(self) -> pb.RecordDp:
        """Return what Ready tells the server of this silo's DP-SGD."""
        policy = self.budget.policy
        return pb.RecordDp(
            target_epsilon=policy.epsilon or 0.0,
            delta=policy.delta,
            noise_multiplier=self.budget.noise_multiplier,
            max_grad_norm=policy.max_grad_norm,
            epsilon_spent=self.epsilon,
        )

    def record(self) -> dict[str, Any]:
        """Return the budget's state as an audit field."""
        policy = self.budget.policy
        return {
            "epsilon": self.epsilon,
            "delta": policy.delta,
            "target_epsilon": policy.epsilon,
            "noise_multiplier": self.budget.noise_multiplier,
            "max_grad_norm": policy.max_grad_norm,
            "rounds": self.budget.rounds,
            "history": [list(entry) for entry in self.budget.history],
        }

    def save(self) -> None:
        """Write the state atomically (temp file, fsync, rename); nothing without a folder."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": STATE_FORMAT, "job": self.job, "budget": self.budget.to_dict()}
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.path)


def check_budget(budget: SiloBudget | None, which: str, train: pb.TrainConfig) -> None:
    """Raise BudgetRefusalError if ``which`` round would pass the budget (None: no DP-SGD)."""
    if budget is not None:
        budget.check(which, train)


def _plan(train_examples: int, train: pb.TrainConfig) -> RoundPlan:
    try:
        return plan_round(train_examples, train.batch_size, train.local_epochs)
    except ValueError as exc:
        raise ConfigError(f"record-level DP-SGD cannot plan the round: {exc}") from exc


def _load(path: Path, policy: DpSgdPolicy, key: dict[str, Any]) -> PrivacyBudget:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the privacy budget {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path}: not a privacy budget of format {STATE_FORMAT}")
    if state.get("job") != key:
        raise ConfigError(
            f"{path} belongs to another job than job {key['job_id']} (seed {key['seed']}, "
            "task hash): move it away to start this job's budget afresh"
        )
    budget = state.get("budget")
    if not isinstance(budget, dict):
        raise ConfigError(f"{path}: malformed privacy budget")
    try:
        return PrivacyBudget.from_dict(budget, policy)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
