"""A silo's record-level privacy budget across every round of a job (Opacus' RDP accountant).

The silo's operator states the policy (``DpSgdPolicy``): delta and the clipping norm, and either
a budget epsilon (the noise multiplier is then derived for the job's planned rounds x steps with
Opacus' ``get_noise_multiplier``) or a noise multiplier (then epsilon is reported, and capped too
when a budget is also given). ``PrivacyBudget`` composes the rounds actually trained::

    budget = PrivacyBudget.plan(policy, rounds=job_rounds, round_plan=plan_round(n, b, epochs))
    if budget.would_exceed(plan_round(n, b, epochs)):
        ...  # leave the job before training, telling the server why
    result = task.train(model, data, replace(config, privacy=budget.dp_sgd_config(seed=None)))
    epsilon = budget.record(result.privacy)   # after each round; save with budget.to_dict()

Epsilon is the RDP bound of the subsampled Gaussian mechanism (Mironov 2017,
https://arxiv.org/abs/1702.07476; Mironov, Talwar, Zhang 2019, https://arxiv.org/abs/1908.10530)
composed over all steps, converted to (epsilon, delta) as Opacus does (Balle et al. 2020,
https://arxiv.org/abs/1905.09982). The state is a small JSON-able dict (never pickled): a client
that restarts reloads it, and refuses a saved budget made under a different policy.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsilo.common.errors import ConfigError
from fedsilo.tasks.interface import DpSgdConfig, DpSgdReport

FORMAT_VERSION = 1


class DpSgdPolicy(BaseModel):
    """A silo operator's record-level DP policy: budget, delta, clipping, noise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delta: float = Field(gt=0, lt=1, description="Delta of the (epsilon, delta) guarantee.")
    max_grad_norm: float = Field(gt=0, description="Per-sample gradient clipping norm.")
    epsilon: float | None = Field(
        None, gt=0, description="Budget for the whole job; no round may take epsilon past it."
    )
    noise_multiplier: float | None = Field(
        None, gt=0, description="Noise std / clipping norm; default: derived from epsilon."
    )
    reproducible: bool = Field(
        False, description="Seed noise and sampling from the job's seed (research only)."
    )

    @model_validator(mode="after")
    def _budget_or_noise(self) -> DpSgdPolicy:
        if self.epsilon is None and self.noise_multiplier is None:
            raise ValueError("a DP-SGD policy needs epsilon, noise_multiplier, or both")
        return self


@dataclass(frozen=True)
class RoundPlan:
    """One round of DP-SGD as the accountant sees it: sampling rate and number of steps."""

    sample_rate: float
    steps: int


def plan_round(train_examples: int, batch_size: int, local_epochs: int) -> RoundPlan:
    """Return the sampling rate and steps that train_classifier's DP-SGD takes in one round.

    With ``batches = ceil(train_examples / batch_size)``, Opacus' Poisson loader takes
    ``int(1 / (1 / batches))`` steps per epoch, each record joining each step with probability
    1 / steps. That is ``batches`` except where the float division rounds below it (93, 99,
    105, ... batches: one step fewer, at a slightly higher rate), which this plan mirrors.
    """
    if train_examples < 1 or batch_size < 1 or local_epochs < 1:
        raise ValueError("train_examples, batch_size and local_epochs must be >= 1")
    batches = math.ceil(train_examples / batch_size)
    steps = int(1 / (1 / batches))  # opacus.utils.uniform_sampler: int(1 / sample_rate)
    return RoundPlan(sample_rate=1 / steps, steps=local_epochs * steps)


def _epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [entry for entry in history if entry[2] > 0]
    return float(accountant.get_epsilon(delta=delta))


def derive_noise_multiplier(policy: DpSgdPolicy, rounds: int, round_plan: RoundPlan) -> float:
    """Return the smallest noise multiplier keeping ``rounds`` planned rounds within epsilon."""
    from opacus.accountants.utils import get_noise_multiplier

    if policy.epsilon is None:
        raise ValueError("deriving the noise multiplier needs the policy's epsilon")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=policy.epsilon,
                target_delta=policy.delta,
                sample_rate=round_plan.sample_rate,
                steps=rounds * round_plan.steps,
                accountant="rdp",
            )
        )
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        raise ConfigError(f"epsilon {policy.epsilon:g} cannot be met: {exc}") from exc


class PrivacyBudget:
    """Accounts a silo's DP-SGD rounds against its policy; JSON-serialisable."""

    def __init__(
        self,
        policy: DpSgdPolicy,
        noise_multiplier: float,
        history: list[tuple[float, float, int]] | None = None,
        rounds: int = 0,
    ) -> None:
        if not noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
        self.policy = policy
        self.noise_multiplier = float(noise_multiplier)
        # Opacus' RDP accountant history: (noise multiplier, sample rate, steps) per round
        self.history: list[tuple[float, float, int]] = list(history or [])
        self.rounds = rounds  # rounds recorded (equal ones share a history entry)
        self._epsilon = _epsilon(self.history, policy.delta)

    @classmethod
    def plan(cls, policy: DpSgdPolicy, rounds: int, round_plan: RoundPlan) -> PrivacyBudget:
        """Return an empty budget whose noise fits ``rounds`` rounds like ``round_plan``.

        The policy's noise multiplier is used when it sets one; otherwise it is derived from
        its epsilon, planning conservatively as if this silo took part in every round.
        """
        if policy.noise_multiplier is not None:
            return cls(policy, policy.noise_multiplier)
        return cls(policy, derive_noise_multiplier(policy, rounds, round_plan))

    @property
    def epsilon(self) -> float:
        """Return the epsilon spent so far, at the policy's delta."""
        return self._epsilon

    def dp_sgd_config(self, seed: int | None) -> DpSgdConfig:
        """Return the next round's DP-SGD settings; ``seed`` is used only if the policy allows."""
        return DpSgdConfig(
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.policy.max_grad_norm,
            seed=seed if self.policy.reproducible else None,
        )

    def epsilon_after(self, round_plan: RoundPlan) -> float:
        """Return the epsilon the budget would show after one more round like ``round_plan``."""
        entry = (self.noise_multiplier, round_plan.sample_rate, round_plan.steps)
        return _epsilon([*self.history, entry], self.policy.delta)

    def would_exceed(self, round_plan: RoundPlan) -> bool:
        """Return whether one more round like ``round_plan`` would take epsilon past the budget."""
        if self.policy.epsilon is None:
            return False
        return self.epsilon_after(round_plan) > self.policy.epsilon

    def record(self, report: DpSgdReport | None) -> float:
        """Add a trained round to the budget and return the epsilon spent so far.

        Refuses (ConfigError) a round the Task trained without DP-SGD, or with less noise or a
        larger clipping norm than this budget gave it: the epsilon would not hold.
        """
        if report is None:
            raise ConfigError("the task trained without DP-SGD although the DP policy asks for it")
        if report.noise_multiplier < self.noise_multiplier:
            raise ConfigError(
                f"the task used noise multiplier {report.noise_multiplier:g}, "
                f"below the budget's {self.noise_multiplier:g}"
            )
        if report.max_grad_norm > self.policy.max_grad_norm:
            raise ConfigError(
                f"the task clipped at {report.max_grad_norm:g}, "
                f"above the policy's {self.policy.max_grad_norm:g}"
            )
        noise, rate = float(report.noise_multiplier), float(report.sample_rate)
        if self.history and self.history[-1][:2] == (noise, rate):  # merged as Opacus does
            self.history[-1] = (noise, rate, self.history[-1][2] + int(report.steps))
        else:
            self.history.append((noise, rate, int(report.steps)))
        self.rounds += 1
        self._epsilon = _epsilon(self.history, self.policy.delta)
        return self._epsilon

    def to_dict(self) -> dict[str, Any]:
        """Return the budget's state as JSON-able plain data."""
        return {
            "format": FORMAT_VERSION,
            "policy": self.policy.model_dump(mode="json"),
            "noise_multiplier": self.noise_multiplier,
            "history": [list(entry) for entry in self.history],
            "rounds": self.rounds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], policy: DpSgdPolicy) -> PrivacyBudget:
        """Return the budget saved in ``data``; ConfigError if malformed or not ``policy``'s."""
        try:
            if data["format"] != FORMAT_VERSION:
                raise ConfigError(f"privacy budget format {data['format']!r} is not supported")
            saved = DpSgdPolicy.model_validate(data["policy"])
            history = [(float(z), float(q), int(steps)) for z, q, steps in data["history"]]
            noise = float(data["noise_multiplier"])
            rounds = int(data["rounds"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed privacy budget: {exc}") from exc
        if saved != policy:
            raise ConfigError("the saved privacy budget was made under a different DP policy")
        return cls(policy, noise, history, rounds)

    def save(self, path: Path) -> None:
        """Write the budget to ``path`` as JSON atomically (temp file, fsync, rename)."""
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path, policy: DpSgdPolicy) -> PrivacyBudget:
        """Read a budget written by ``save``; ConfigError if unreadable or not ``policy``'s."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the privacy budget {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"malformed privacy budget {path}")
        return cls.from_dict(data, policy)
