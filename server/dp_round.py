"""DP-FedAvg in the job's rounds: clip, sum, add noise, account, stop before the budget is spent.

The intake already clips every update's change to C and weighs updates equally (the job's
DP settings make it so, ``server/job.py``); the fold gives the plain mean of the k updates that
arrived. ``DpRound.noised`` turns it into ``g + (sum of clipped deltas + N(0, (zC)^2)) / n``
with the fixed n = clients_per_round (``server/privacy.py``), which the strategy then steps
from as from any mean (a server optimizer is post-processing). The accountant is charged for
a round before its model can leave the server, and its state travels in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedsilo.server.config import ServerConfig
from fedsilo.server.privacy import (
    DpFedAvgAccountant,
    DpFedAvgSettings,
    delta_sum_from_update_sum,
    dp_fedavg_step,
    round_noise_generator,
)

State = dict[str, torch.Tensor]


def dp_settings(config: ServerConfig) -> DpFedAvgSettings | None:
    """The job's DP-FedAvg settings, or None when it runs without."""
    if config.dp_noise_multiplier is None or config.dp_clip_norm is None:
        return None
    assert config.clients_per_round is not None  # the job spec requires it with DP
    return DpFedAvgSettings(
        noise_multiplier=config.dp_noise_multiplier,
        mode="central",
        clip_norm=config.dp_clip_norm,
        clients_per_round=config.clients_per_round,
        population=config.dp_population or config.clients_per_round,
        delta=config.dp_delta,
        target_epsilon=config.dp_target_epsilon,
        accountant=config.dp_accountant,
        seed=config.dp_noise_seed,
    )


class DpRound:
    """The job's DP-FedAvg: the noised mean of each round and the privacy it spends."""

    def __init__(self, settings: DpFedAvgSettings) -> None:
        self.settings = settings
        self.accountant = DpFedAvgAccountant.for_job(settings)

    def budget_left_for_a_round(self) -> bool:
        """Whether one more round keeps epsilon within the target (always, without one)."""
        target = self.settings.target_epsilon
        if target is None:
            return True
        z = self.settings.noise_multiplier
        return not self.accountant.would_exceed(target, z, self.settings.accountant)

    def noised(
        self,
        global_state: Mapping[str, torch.Tensor],
        mean: State,
        contributors: int,
        round_number: int,
    ) -> State:
        """Return ``g + (sum of deltas + noise) / n`` from the plain mean of ``contributors``."""
        update_sum = {
            name: tensor.to(torch.float64).mul_(contributors) for name, tensor in mean.items()
        }
        delta_sum = delta_sum_from_update_sum(update_sum, global_state, contributors)
        generator = round_noise_generator(self.settings, round_number)
        return dp_fedavg_step(global_state, delta_sum, self.settings, generator)

    def charge(self) -> dict[str, Any]:
        """Record one released round; return the metrics-row fields (epsilon by each bound)."""
        self.accountant.record_round(self.settings.noise_multiplier)
        decided = self.settings.accountant
        return {
            "epsilon": self.accountant.epsilon(decided),
            "dp": {
                "delta": self.settings.delta,
                "accountant": decided,
                "rounds": self.accountant.rounds,
            },
        }

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint keeps (JSON-able numbers and lists)."""
        return self.accountant.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's accountant."""
        self.accountant = DpFedAvgAccountant.from_state_dict(state)
