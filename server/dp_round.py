"""DP-FedAvg in the job's rounds: clip, sum, add noise, account, stop before the budget is spent.

Central mode: the intake clips every update's change to C and weighs updates equally (the job's
DP settings make it so, ``server/job.py``); the fold gives the plain mean of the k updates that
arrived, and ``DpRound.noised`` turns it into ``g + (sum of clipped deltas + N(0, (zC)^2)) / n``
with the fixed n = clients_per_round (``server/privacy.py``), which the strategy then steps
from as from any mean (a server optimizer is post-processing).

Distributed mode, with secure aggregation: each client clips its own delta and adds its secret
share of the noise, N(0, (zC)^2 / n), before masking (``client/secagg_client.py``); the server
only ever holds the noised sum of the k survivors and adds nothing, and the round is charged at
the noise they really added, z * sqrt(k / n).

The accountant is charged for a round before its model can leave the server, and its state is
written, fsynced, to ``privacy_ledger.json`` in the run folder at every charge: checkpoints are
spaced out, and a resumed job redoes (and sends again) the rounds after its checkpoint, so the
ledger, not the checkpoint, says what has been spent. ``--resume`` continues from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedsilo.server.config import ServerConfig
from fedsilo.server.privacy import (
    DpFedAvgAccountant,
    DpFedAvgSettings,
    delta_sum_from_update_sum,
    dp_fedavg_step,
    effective_noise_multiplier,
    round_noise_generator,
)
from fedsilo.server.run_files import atomic_write

State = dict[str, torch.Tensor]
LEDGER_FILE = "privacy_ledger.json"


def dp_settings(config: ServerConfig) -> DpFedAvgSettings | None:
    """The job's DP-FedAvg settings, or None when it runs without."""
    if config.dp_noise_multiplier is None or config.dp_clip_norm is None:
        return None
    assert config.clients_per_round is not None  # the job spec requires it with DP
    return DpFedAvgSettings(
        noise_multiplier=config.dp_noise_multiplier,
        mode="distributed" if config.secure_aggregation else "central",
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

    def __init__(
        self,
        settings: DpFedAvgSettings,
        min_contributors: int = 1,
        ledger: Path | None = None,
        resume: bool = False,
    ) -> None:
        self.settings = settings
        self.accountant = DpFedAvgAccountant.for_job(settings)
        self.ledger = ledger  # every charge, on disk before the round's model can leave
        if ledger is not None and resume and ledger.exists():
            self.accountant = DpFedAvgAccountant.from_state_dict(json.loads(ledger.read_text()))
        # The fewest updates a round may complete with: in distributed mode, the least noise.
        self.min_contributors = min(max(1, min_contributors), settings.clients_per_round)
        self._contributors = settings.clients_per_round  # of the round last noised

    @classmethod
    def for_job(cls, config: ServerConfig) -> DpRound | None:
        """The job's DP-FedAvg with its ledger in the run folder, or None when it runs without."""
        settings = dp_settings(config)
        if settings is None:
            return None
        ledger = config.run_dir / LEDGER_FILE
        return cls(settings, config.min_clients, ledger, config.resume)

    def budget_left_for_a_round(self) -> bool:
        """Whether one more round keeps epsilon within the target (always, without one)."""
        target = self.settings.target_epsilon
        if target is None:
            return True
        z = effective_noise_multiplier(self.settings, self.min_contributors)
        return not self.accountant.would_exceed(target, z, self.settings.accountant)

    def noised(
        self,
        global_state: Mapping[str, torch.Tensor],
        mean: State,
        contributors: int,
        round_number: int,
    ) -> State:
        """Return ``g + (sum of deltas + noise) / n`` from the plain mean of ``contributors``.

        In distributed mode the mean already holds the clients' noise; the server adds none.
        """
        self._contributors = contributors
        update_sum = {
            name: tensor.to(torch.float64).mul_(contributors) for name, tensor in mean.items()
        }
        delta_sum = delta_sum_from_update_sum(update_sum, global_state, contributors)
        generator = round_noise_generator(self.settings, round_number)
        return dp_fedavg_step(global_state, delta_sum, self.settings, generator)

    def charge(self) -> dict[str, Any]:
        """Record one released round; return the metrics-row fields (epsilon by each bound)."""
        noise_multiplier = effective_noise_multiplier(self.settings, self._contributors)
        self.accountant.record_round(noise_multiplier)
        if self.ledger is not None:
            text = json.dumps(self.accountant.state_dict()).encode()
            atomic_write(self.ledger, lambda handle: handle.write(text))
        decided = self.settings.accountant
        return {
            "epsilon": self.accountant.epsilon(decided),
            "dp": {
                "mode": self.settings.mode,
                "noise_multiplier": noise_multiplier,
                "delta": self.settings.delta,
                "accountant": decided,
                "rounds": self.accountant.rounds,
            },
        }

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint keeps (JSON-able numbers and lists)."""
        return self.accountant.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's accountant, unless the ledger has charged more since."""
        restored = DpFedAvgAccountant.from_state_dict(state)
        if restored.rounds >= self.accountant.rounds:
            self.accountant = restored
