"""The server's one config model; flags, FEDSILO_* env vars and a config file all land here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsilo.common.codec import DEFAULT_CHUNK_SIZE
from fedsilo.common.compression import DEFAULT_TOPK_FRACTION, Codec
from fedsilo.common.logging import LEVELS
from fedsilo.common.ports import DEFAULT_PORT_BASE, MAX_PORT, job_port


class ServerConfig(BaseModel):
    """Everything one ``fl-server`` job needs; frozen once loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: int = Field(ge=0, description="Job number; the job listens on port_base + job_id.")
    port_base: int = Field(DEFAULT_PORT_BASE, ge=0, description="Port of job 0.")
    host: str = Field("0.0.0.0", min_length=1, description="Address to listen on.")
    rounds: int = Field(5, ge=1, description="Number of training rounds.")
    min_clients: int = Field(2, ge=1, description="Clients needed to start and to finish a round.")
    start_clients: int | None = Field(
        None, ge=1, description="Ready clients needed before the first round (default min_clients)."
    )
    task: str = Field(
        "synthetic", min_length=1, description="Built-in task or package.module:Name."
    )
    task_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Keyword arguments of the task (config file only)."
    )
    seed: int = Field(0, ge=0, lt=2**63, description="Seed of the model, data and training.")
    strategy: str = Field("fedavg", description="Aggregation strategy name (server.strategies).")
    strategy_options: dict[str, float | int] = Field(
        default_factory=dict, description="Keyword arguments of the strategy (config file only)."
    )
    out: Path | None = Field(None, description="Run folder; default runs/job-<job_id>.")
    round_timeout: float = Field(300.0, gt=0, description="Seconds a round waits for updates.")
    join_timeout: float = Field(600.0, gt=0, description="Seconds to wait for min_clients.")
    progress_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a client in a round may show no progress before it is cut off.",
    )
    resume: bool = Field(False, description="Continue from the run folder's checkpoint.")
    local_epochs: int = Field(1, ge=1, description="Local epochs per round on each client.")
    batch_size: int = Field(32, ge=1, description="Local mini-batch size.")
    learning_rate: float = Field(0.1, gt=0, description="Local SGD learning rate.")
    proximal_mu: float = Field(0.0, ge=0, description="FedProx proximal weight mu (0: off).")
    clients_per_round: int | None = Field(
        None, ge=1, description="Sample this many ready clients per round (seeded)."
    )
    fraction: float | None = Field(
        None, gt=0, le=1, description="Sample this fraction of ready clients per round."
    )
    tensorboard: bool = Field(False, description="Also write TensorBoard scalars (extra).")
    chunk_size: int = Field(
        DEFAULT_CHUNK_SIZE, ge=1024, le=64 << 20, description="Raw bytes per tensor chunk."
    )
    compression: Codec = Field(
        "none", description="How clients encode their updates (common/compression.py)."
    )
    topk_fraction: float = Field(
        DEFAULT_TOPK_FRACTION, gt=0, le=1, description="topk: fraction of each tensor sent."
    )
    per_channel: bool = Field(False, description="int8: one scale per slice along dim 0.")
    max_clients: int = Field(1024, ge=1, description="Most client sessions served at once.")
    update_norm_bound: float | None = Field(
        None, gt=0, description="L2 bound on an update's change to the global model."
    )
    norm_bound_action: Literal["reject", "clip"] = Field(
        "reject", description="What to do with an update over the bound."
    )
    tls: Path | None = Field(
        None, description="Server bundle folder from fl-certs (mutual TLS, admitted clients)."
    )
    insecure: bool = Field(False, description="Plaintext without certificates (trusted nets).")
    health_port: int | None = Field(
        None, ge=1, le=MAX_PORT, description="Also serve gRPC health, plaintext, on 127.0.0.1."
    )
    log_level: str = Field("info", pattern="^(" + "|".join(LEVELS) + ")$")

    @model_validator(mode="after")
    def _transport_chosen(self) -> ServerConfig:
        if self.tls is None and not self.insecure:
            raise ValueError(
                "tls: give --tls DIR/server (from fl-certs) for mutual TLS, "
                "or --insecure on a network you trust"
            )
        if self.tls is not None and self.insecure:
            raise ValueError("insecure: --insecure and --tls exclude each other")
        return self

    @model_validator(mode="after")
    def _participation_consistent(self) -> ServerConfig:
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError("clients_per_round: give clients_per_round or fraction, not both")
        if self.clients_per_round is not None and self.clients_per_round < self.min_clients:
            raise ValueError(
                f"clients_per_round: {self.clients_per_round} is below min_clients "
                f"{self.min_clients}, so no round could complete"
            )
        if self.start_clients is not None and self.start_clients < self.min_clients:
            raise ValueError(f"start_clients: must be at least min_clients {self.min_clients}")
        return self

    @model_validator(mode="after")
    def _port_in_range(self) -> ServerConfig:
        if not 1 <= self.port <= MAX_PORT:
            raise ValueError(
                f"port_base + job_id = {self.port_base} + {self.job_id} = {self.port} "
                f"is outside 1..{MAX_PORT}; choose another --port-base"
            )
        return self

    @property
    def port(self) -> int:
        """The TCP port this job listens on."""
        return job_port(self.port_base, self.job_id)

    @property
    def run_dir(self) -> Path:
        """Folder for metrics.jsonl and model.pt."""
        return self.out if self.out is not None else Path("runs") / f"job-{self.job_id}"
