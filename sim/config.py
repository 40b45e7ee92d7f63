"""fl-sim's config: the job's settings (JobSpec) plus how this process simulates the clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from fedsilo.client.dp_budget import RecordDpSettings
from fedsilo.common.devices import DEVICE_PATTERN
from fedsilo.common.errors import ConfigError
from fedsilo.common.logging import LogLevel
from fedsilo.common.settings import FedsiloSettings
from fedsilo.server.config import ServerConfig
from fedsilo.server.job_spec import JobSpec, job_field

RAY_ONLY = ("ray_address", "ray_num_cpus", "ray_num_gpus")
# A simulated client that fails or whose worker dies is reported by its backend at once, so
# no deadline is needed (a week: a slow round is never cut short).
SIM_ROUND_TIMEOUT = 7 * 24 * 3600.0


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
    backend: Literal["local", "ray"] = Field(
        "local",
        description="Where the clients run: local worker processes, or Ray actors (extra: ray).",
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="Worker processes (local) or Ray actors (ray), each hosting a share of the "
        "clients; local 0: in this process. Default: the CPU count (local), the cluster's CPUs "
        "/ ray_num_cpus (ray); never more than the clients.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch in each worker (default: 1 with several local "
        "workers, torch's own with one; ray_num_cpus for a Ray actor).",
    )
    placement: Literal["auto", "fixed"] | None = Field(
        None,
        description="local: auto sends each round's model to whichever worker is idle when "
        "the clients keep no state between rounds (no top-k residual, SCAFFOLD, DP-SGD budget "
        "or secure aggregation) and the task's training depends only on model, data and "
        "round settings; fixed keeps client i in worker i mod workers. Default: auto for the "
        "built-in tasks, fixed for a task of your own (it may keep state across rounds).",
    )
    ray_address: str | None = Field(
        None,
        description="ray: the cluster (host:port, auto); default: RAY_ADDRESS, a cluster "
        "started on this machine, else a new local instance.",
    )
    ray_num_cpus: float = Field(1.0, gt=0, description="ray: CPUs reserved by each actor.")
    ray_num_gpus: float = Field(
        0.0, ge=0, description="ray: GPUs reserved by each actor (fractions share one)."
    )
    log_level: LogLevel = Field("warning", description="Least severe log lines written.")

    @model_validator(mode="after")
    def _backend_settings_fit(self) -> SimConfig:
        given = self.model_fields_set
        if self.backend == "local":
            stray = sorted(name for name in RAY_ONLY if name in given)
            if stray:
                raise ValueError(f"{stray[0]}: only with backend ray")
        elif self.workers == 0:
            raise ValueError("workers: 0 (in this process) is for backend local; ray needs >= 1")
        elif "placement" in given:
            raise ValueError("placement: only with backend local (a Ray client stays in its actor)")
        return self

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
