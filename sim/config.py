"""The simulator's config: the job's settings plus how many clients live in this process."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedsilo.common.compression import DEFAULT_TOPK_FRACTION, Codec
from fedsilo.common.devices import DEVICE_PATTERN
from fedsilo.common.logging import LEVELS
from fedsilo.server.config import ServerConfig

SIM_ROUND_TIMEOUT = 7 * 24 * 3600.0  # in-process clients cannot vanish; no deadline is needed


class SimConfig(BaseModel):
    """Everything one ``fl-sim`` run needs; frozen once loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field("synthetic", min_length=1)
    task_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    clients: int | None = Field(
        None, ge=1, description="Simulated clients (default: every partition the task has)."
    )
    clients_per_round: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    min_clients: int = Field(1, ge=1)
    rounds: int = Field(5, ge=1)
    strategy: str = "fedavg"
    strategy_options: dict[str, float | int] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, lt=2**63)
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    proximal_mu: float = Field(0.0, ge=0)
    out: Path = Field(Path("runs/sim"))
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    threads: int | None = Field(None, ge=1)
    tensorboard: bool = False
    compression: Codec = "none"
    topk_fraction: float = Field(DEFAULT_TOPK_FRACTION, gt=0, le=1)
    per_channel: bool = False
    log_level: str = Field("warning", pattern="^(" + "|".join(LEVELS) + ")$")

    def server_config(self, clients: int) -> ServerConfig:
        """The job config the server's own loop runs with, for ``clients`` simulated clients."""
        return ServerConfig.model_validate(
            {
                "job_id": 0,
                "insecure": True,
                "rounds": self.rounds,
                "min_clients": self.min_clients,
                "start_clients": clients,
                "clients_per_round": self.clients_per_round,
                "fraction": self.fraction,
                "task": self.task,
                "task_options": self.task_options,
                "strategy": self.strategy,
                "strategy_options": self.strategy_options,
                "seed": self.seed,
                "out": self.out,
                "local_epochs": self.local_epochs,
                "batch_size": self.batch_size,
                "learning_rate": self.learning_rate,
                "proximal_mu": self.proximal_mu,
                "round_timeout": SIM_ROUND_TIMEOUT,
                "join_timeout": SIM_ROUND_TIMEOUT,
                "progress_timeout": SIM_ROUND_TIMEOUT,
                "max_clients": max(clients, 1),
                "tensorboard": self.tensorboard,
                "compression": self.compression,
                "topk_fraction": self.topk_fraction,
                "per_channel": self.per_channel,
                "log_level": self.log_level,
            }
        )
