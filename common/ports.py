"""The port rule of fedsilo, in one place: job ``N`` listens on ``port_base + N``."""

from __future__ import annotations

DEFAULT_PORT_BASE = 50000
MAX_PORT = 65535


def job_port(port_base: int, job_id: int) -> int:
    """Return the port of a job: ``port_base + job_id``."""
    return port_base + job_id
