"""The local backend: worker processes on this machine, each hosting a share of the clients.

Client ``i`` lives in worker ``i % workers`` for the whole run. Each worker is a
``python -m fedsilo.sim.worker`` process joined to the driver by a socket pair; envelopes of
wire bytes go both ways (``sim/frames.py``), never pickles. Per worker, the driver has:

- a send lock, held by a client's link for one whole outbox item, so that a model stream
  reaches the worker in one piece (its clients share one model and decode into it);
- a reader thread, which hands each frame the worker's clients send to their sessions, and
  reports a client that raised, or every client of a worker that died (EOF on its socket).

A worker exits on QUIT or when the driver's end of its socket closes (the driver died).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from fedsilo.common.errors import FedsiloError
from fedsilo.sim.frames import Kind, seal, unseal
from fedsilo.sim.host import ClientFailure, HostSettings
from fedsilo.sim.links import Federation

QUIT_SECONDS = 10.0  # how long a worker may take to exit after QUIT before it is killed


@dataclass
class _Worker:
    """The driver's end of one worker process."""

    number: int
    process: subprocess.Popen[bytes]
    conn: Connection
    indices: list[int]
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    quitting: bool = False
    reader: threading.Thread | None = None

    def describe_exit(self) -> str:
        """Say how the process ended (waiting for it briefly)."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return f"worker {self.number} (pid {self.process.pid}) closed its connection"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"worker {self.number} (pid {self.process.pid}) was killed by {name}"
        return f"worker {self.number} (pid {self.process.pid}) exited with code {code}"


class LocalWorkers:
    """Worker processes hosting the clients; implements the backend's start/forward/close."""

    def __init__(self, count: int, clients: int, settings: HostSettings) -> None:
        self._workers = [
            _spawn(number, list(range(number, clients, count)), settings) for number in range(count)
        ]

    def hello(self, index: int) -> bytes:
        """Create client ``index`` in its worker; return its Hello (before ``serve``)."""
        worker = self._worker_of(index)
        try:
            worker.conn.send_bytes(seal(Kind.START, index))
            kind, answered, payload = unseal(worker.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            raise FedsiloError(f"{worker.describe_exit()} while starting its clients") from exc
        if kind is not Kind.HELLO or answered != index:
            raise FedsiloError(f"worker {worker.number} answered START with {kind.name}")
        return payload

    def serve(self, federation: Federation) -> None:
        """Start one reader thread per worker, delivering to ``federation``."""
        for worker in self._workers:
            worker.reader = threading.Thread(
                target=_read, args=(worker, federation), name=f"worker-{worker.number}", daemon=True
            )
            worker.reader.start()

    def forward(self, index: int, frames: Iterator[bytes]) -> None:
        """Send one outbox item's frames to client ``index``, in one piece."""
        worker = self._worker_of(index)
        with worker.send_lock:
            try:
                for frame in frames:
                    worker.conn.send_bytes(seal(Kind.FRAME, index, frame))
            except OSError:
                pass  # the worker is gone: its reader reports its clients (EOF)

    def close(self) -> None:
        """Tell every worker to quit; kill one that does not exit in time."""
        for worker in self._workers:
            worker.quitting = True
            with worker.send_lock, contextlib.suppress(OSError):  # already gone
                worker.conn.send_bytes(seal(Kind.QUIT, 0))
        for worker in self._workers:
            try:
                worker.process.wait(timeout=QUIT_SECONDS)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=QUIT_SECONDS)
            if worker.reader is not None:  # it sees EOF now that the worker has exited
                worker.reader.join(QUIT_SECONDS)
            worker.conn.close()

    def pids(self) -> list[int]:
        """Process ids of the workers (for tests and logs)."""
        return [worker.process.pid for worker in self._workers]

    def _worker_of(self, index: int) -> _Worker:
        return self._workers[index % len(self._workers)]


def _spawn(number: int, indices: list[int], settings: HostSettings) -> _Worker:
    ours, theirs = socket.socketpair()
    with theirs:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedsilo.sim.worker",
                str(theirs.fileno()),
                settings.to_json(),
            ],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=_worker_env(settings.threads),
        )
    return _Worker(number, process, Connection(ours.detach()), indices)


def _worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:  # OpenMP and BLAS pools too, not only torch's intra-op threads
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    return env


def _read(worker: _Worker, federation: Federation) -> None:
    """Deliver what a worker's clients send until its socket closes; then report its loss."""
    while True:
        try:
            kind, index, payload = unseal(worker.conn.recv_bytes())
        except (EOFError, OSError):
            break
        if kind is Kind.FRAME:
            federation.receive(index, payload)
        elif kind is Kind.FAILED:
            federation.failed(ClientFailure.from_json(payload))
    if not worker.quitting:
        federation.lost(worker.indices, worker.describe_exit())
