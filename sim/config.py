"""fl-sim's config: the job's settings (JobSpec) plus how this process simulates the clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from fedsilo.client.dp_budget import RecordDpSettings
from fedsilo.common.devices import DEVICE_PATTERN
from fedsilo.common.errors import ConfigError
from fedsilo.common.logging import LogLevel
from fedsilo.common.settings import FedsiloSettings
from fedsilo.server.config import ServerConfig
from fedsilo.server.job_spec import JobSpec, job_field

SIM_ROUND_TIMEOUT = 7 * 24 * 3600.0  # in-process clients cannot vanish; no deadline is needed


class SimConfig(JobSpec, RecordDpSettings, FedsiloSettings):
    """Everything one ``fl-sim`` run needs: JobSpec's settings and these; frozen once loaded.

    The ``record_dp_*`` settings are every simulated silo's own DP-SGD policy, as each
    fl-client's operator would set it.
    """

    model_config = FedsiloSettings.model_config  # JobSpec's and more: env prefix

    # fl-sim's one job default that differs from fl-server's: a simulation may run one client.
    min_clients: int = job_field("min_clients", default=1)

    clients: int | None = Field(
        None, ge=1, description="Simulated clients (default: every partition the task has)."
    )
    out: Path = Field(Path("runs/sim"), description="Run folder.")
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN,
        description="Where to train: auto (a GPU when there is one), cpu, cuda, cuda:N.",
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for torch.")
    log_level: LogLevel = Field("warning", description="Least severe log lines written.")

    def job_spec(self) -> dict[str, Any]:
        """Return the value of every JobSpec field of this config."""
        return {name: getattr(self, name) for name in JobSpec.model_fields}

    def server_config(self, clients: int) -> ServerConfig:
        """The job config the server's own loop runs with, for ``clients`` simulated clients."""
        if clients < self.min_clients:
            raise ConfigError(
                f"clients: {clients} simulated clients cannot meet min_clients {self.min_clients}"
            )
        return ServerConfig.model_validate(
            {
                **self.job_spec(),
                "job_id": 0,
                "insecure": True,
                "out": self.out,
                "start_clients": clients,  # every client is in before round 1: same ids, same run
                "round_timeout": SIM_ROUND_TIMEOUT,
                "join_timeout": SIM_ROUND_TIMEOUT,
                "progress_timeout": SIM_ROUND_TIMEOUT,
                "max_clients": max(clients, 1),
                "log_level": self.log_level,
            }
        )
