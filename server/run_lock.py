"""One run folder, one job: the server that uses a run folder holds a lock on it.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``<run>/fl-server.lock``. The kernel ties it to the
open file, so it ends with the process however the process ends (``kill -9`` included): a lock
file left by a dead server is only a file, and the next server takes it over. The holder writes
its pid, host, port, job and start time into the file, so that a refused server can name it.

A refused server opens the file without truncating it and reads it: nothing in the folder
changes. ``flock`` rather than POSIX ``fcntl`` record locks because those are dropped when the
process closes *any* descriptor of the file, which a later reader in the same process would do.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedsilo.common.errors import ConfigError

LOCK_FILE = "fl-server.lock"
MAX_HOLDER_BYTES = 4096


def holder_record(job_id: int, port: int) -> dict[str, Any]:
    """Describe this process as a holder: pid, host, port, job and start time (UTC)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "port": port,
        "job_id": job_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def describe_holder(raw: bytes) -> str:
    """Turn a lock file's content into words for the refusal message."""
    try:
        holder = json.loads(raw)
        return (
            f"fl-server pid {int(holder['pid'])} on {holder['host']}, port {int(holder['port'])}, "
            f"job {int(holder['job_id'])}, since {holder['started']}"
        )
    except (ValueError, KeyError, TypeError):
        # The holder took the lock an instant ago and has not written itself in yet.
        return "a process that has not written its details yet"


def acquire(run_dir: Path, job_id: int, port: int) -> int:
    """Lock ``run_dir`` for this process; return the lock's descriptor.

    Raise ConfigError naming the folder and the holder when another process holds it.
    """
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: a refused server must leave the holder's record as it is.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot use run folder {run_dir}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        record = json.dumps(holder_record(job_id, port), sort_keys=True).encode() + b"\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
    except BlockingIOError:
        holder = describe_holder(os.pread(fd, MAX_HOLDER_BYTES, 0))
        os.close(fd)
        raise ConfigError(
            f"run folder {run_dir} is in use by {holder}; stop that server or choose another "
            f"--out (nothing was changed)"
        ) from None
    except OSError as exc:  # e.g. a file system without flock
        os.close(fd)
        raise ConfigError(f"cannot lock {path}: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def hold_run_folder(run_dir: Path, job_id: int, port: int) -> Iterator[None]:
    """Hold the lock on ``run_dir`` for the block (see ``acquire``); release it at the end."""
    fd = acquire(run_dir, job_id, port)
    try:
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock
