"""fl-server's config: the job's settings (JobSpec) plus the server's own; frozen once loaded.

Flags, FEDSILO_* env vars and a config file all land here (common/settings.py: load_config).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator

from fedsilo.common.logging import LogLevel
from fedsilo.common.ports import DEFAULT_PORT_BASE, MAX_PORT, job_port
from fedsilo.common.settings import FedsiloSettings
from fedsilo.server.job_spec import JobSpec


class ServerConfig(JobSpec, FedsiloSettings):
    """Everything one ``fl-server`` job needs: JobSpec's settings and these."""

    model_config = FedsiloSettings.model_config  # JobSpec's and more: env prefix

    job_id: int = Field(ge=0, description="Job number; the job listens on port_base + job_id.")
    port_base: int = Field(DEFAULT_PORT_BASE, ge=0, description="Port of job 0.")
    host: str = Field("0.0.0.0", min_length=1, description="Address to listen on.")
    out: Path | None = Field(None, description="Run folder; default runs/job-<job_id>.")
    start_clients: int | None = Field(
        None, ge=1, description="Ready clients needed before the first round (default min_clients)."
    )
    round_timeout: float = Field(300.0, gt=0, description="Seconds a round waits for updates.")
    join_timeout: float = Field(600.0, gt=0, description="Seconds to wait for min_clients.")
    progress_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a client in a round may show no progress before it is cut off.",
    )
    transfer_resume_seconds: float = Field(
        60.0,
        ge=0,
        description="Seconds a client whose connection broke mid-upload or mid-download keeps "
        "its place in the round to continue the transfer (never past the round's deadline; "
        "0: it is dropped at once).",
    )
    resume: bool = Field(
        False, description="Continue from the run folder's checkpoint (fresh if there is none)."
    )
    max_clients: int = Field(1024, ge=1, description="Most client sessions served at once.")
    spill_budget_mib: int = Field(
        4096,
        ge=0,
        description="Disk for uploads that arrive before their turn (MiB); beyond it they wait "
        "in line, unread, until their turn.",
    )
    receive_budget_mib: int = Field(
        16,
        ge=1,
        description="Memory for uploads in flight (MiB), shared by the round's streams as fixed "
        "receive windows; one stream moves at most its window per round trip.",
    )
    tls: Path | None = Field(
        None, description="Server bundle folder from fl-certs (mutual TLS, admitted clients)."
    )
    insecure: bool = Field(False, description="Plaintext without certificates (trusted nets).")
    health_port: int | None = Field(
        None,
        ge=1,
        le=MAX_PORT,
        description="The admin port (HTTP): the status page, /status, /metrics and /healthz.",
    )
    health_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address of the admin port; any but loopback needs --tls (mutual TLS).",
    )
    log_level: LogLevel = Field("info", description="Least severe log lines written.")
    threads: int = Field(
        1,
        ge=1,
        description="CPU threads for torch (central evaluation); the streaming work is "
        "per-chunk and runs best on one.",
    )

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
    def _admin_elsewhere_needs_tls(self) -> ServerConfig:
        if self.health_port is not None and self.tls is None and not is_loopback(self.health_host):
            raise ValueError(
                f"health_host: {self.health_host} is not a loopback address, and off loopback the "
                "admin port answers only mutual TLS: give --tls DIR/server, or leave "
                "--health-host at 127.0.0.1"
            )
        return self

    @model_validator(mode="after")
    def _start_after_min(self) -> ServerConfig:
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``); other names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
