"""The client's one config model; flags, FEDSILO_* env vars and a config file all land here."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedsilo.common.logging import LEVELS


class ClientConfig(BaseModel):
    """Everything one ``fl-client`` needs; frozen once loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server: str = Field(description="Server address HOST:PORT.")
    name: str = Field(
        default_factory=socket.gethostname,
        pattern=r"^[A-Za-z0-9_.@:-]{1,128}$",
        description="Stable name of this organisation's client (default: host name).",
    )
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
    threads: int | None = Field(
        None, ge=1, description="CPU threads for local training (default: torch's choice)."
    )
    log_level: str = Field("info", pattern="^(" + "|".join(LEVELS) + ")$")

    @field_validator("server")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        port_ok = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
        if not sep or not host or not port_ok:
            raise ValueError("must be HOST:PORT with a port in 1..65535")
        return value
