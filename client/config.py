"""The client's one config model; flags, FEDSILO_* env vars and a config file all land here."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, field_validator, model_validator

from fedsilo.client.policy import PolicySettings
from fedsilo.common.devices import DEVICE_PATTERN
from fedsilo.common.logging import LEVELS
from fedsilo.common.names import CLIENT_NAME_REGEX


class ClientConfig(PolicySettings):
    """Everything one ``fl-client`` needs (its policy's settings included); frozen once loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server: str | None = Field(
        None, description="Server address HOST:PORT (default: the bundle's connection file)."
    )
    name: str | None = Field(
        None,
        pattern=CLIENT_NAME_REGEX,
        description="Stable name of this client (default: the bundle's, else the host name).",
    )
    bundle: Path | None = Field(
        None, description="Folder from `fl-certs`: certificate, key, CA, connection file."
    )
    insecure: bool = Field(False, description="Plaintext without certificates (trusted nets).")
    job_id: int | None = Field(
        None, ge=0, description="Job to join; when given, the server refuses any other job."
    )
    data: Path | None = Field(None, description="Local data folder, for tasks that read files.")
    partition: int | None = Field(
        None, ge=0, description="Shard of a built-in dataset; default: the assigned client id."
    )
    connect_timeout: float = Field(
        60.0, gt=0, description="Seconds to keep retrying an unreachable server."
    )
    device: str = Field(
        "auto", pattern=DEVICE_PATTERN, description="Where to train: auto, cpu, cuda, cuda:N."
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for local training (default: torch's choice)."
    )
    nproc_per_node: int = Field(
        1,
        ge=1,
        le=256,
        description="Processes that train each round together with torch DDP (gloo on the "
        "CPU, one GPU each with nccl); 1 trains in the client process.",
    )
    out: Path | None = Field(
        None, description="Run folder for audit.jsonl; default runs/client-<name>."
    )
    idle_timeout: float = Field(
        3600.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds without progress either way (nothing received, nothing sent) "
        "while waiting for the server, after which the client gives up.",
    )
    log_level: str = Field("info", pattern="^(" + "|".join(LEVELS) + ")$")

    @model_validator(mode="after")
    def _transport_chosen(self) -> ClientConfig:
        if self.bundle is None and not self.insecure:
            raise ValueError(
                "bundle: give --bundle DIR (from fl-certs) for mutual TLS, "
                "or --insecure on a network you trust"
            )
        if self.bundle is not None and self.insecure:
            raise ValueError("insecure: --insecure and --bundle exclude each other")
        if self.bundle is None and self.server is None:
            raise ValueError("server: required without --bundle (HOST:PORT)")
        return self

    def run_dir(self, name: str) -> Path:
        """Folder of this client's audit.jsonl."""
        return self.out if self.out is not None else Path("runs") / f"client-{name}"

    @field_validator("server")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        port_ok = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
        if not sep or not host or not port_ok:
            raise ValueError("must be HOST:PORT with a port in 1..65535")
        return value
