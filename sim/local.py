"""The local backend: worker processes on this machine, each hosting a share of the clients.

Client ``i`` is created in worker ``i % workers``; each model stream then goes to the worker
``sim/placement.py`` chooses (that one, or whichever is idle when the client keeps no state
between rounds). Each worker is a ``python -m fedsilo.sim.worker`` process joined to the
driver by a socket pair; envelopes of wire bytes go both ways (``sim/frames.py``), never
pickles. Per worker, the driver has:

- a send lock, held by a client's link for one whole outbox item, so that a model stream
  reaches the worker in one piece (its clients share one model and decode into it); a model
  stream ends with END, and the worker is busy until its DONE;
- a reader thread, which hands each frame the worker's clients send to their sessions, and
  reports a client that raised, or every client a worker that died spoke for (EOF).

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
from fedsilo.sim.placement import Placement

QUIT_SECONDS = 10.0  # how long a worker may take to exit after QUIT before it is killed
MODEL_STREAMS = ("sync_model", "evaluate")  # outbox items that placement may send anywhere


@dataclass
class _Worker:
    """The driver's end of one worker process."""

    number: int
    process: subprocess.Popen[bytes]
    conn: Connection
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

    def __init__(self, count: int, clients: int, settings: HostSettings, free: bool) -> None:
        self._workers = [_spawn(number, settings) for number in range(count)]
        self.placement = Placement(count, clients, free)
        self._record_dp = settings.record_dp is not None

    def hello(self, index: int) -> bytes:
        """Create client ``index`` in its worker; return its Hello (before ``serve``)."""
        worker = self._workers[self.placement.home(index)]
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
                target=_read,
                args=(worker, federation, self.placement),
                name=f"worker-{worker.number}",
                daemon=True,
            )
            worker.reader.start()

    def forward(self, index: int, frames: Iterator[bytes], kind: str) -> None:
        """Send one outbox item's frames (opened by a ``kind`` message) to client ``index``, in
        one piece: a model stream to the worker placement gives, the rest where it spoke last."""
        if kind not in MODEL_STREAMS:
            message = list(frames)  # one message: a model stream never comes here
            if kind == "init_config" and message:
                self.placement.joined(index, message[0], self._record_dp)
            self._send(self._workers[self.placement.speaker(index)], index, iter(message))
            return
        choice = self.placement.acquire(index)
        if choice is None:
            return  # no worker can take it: the reader of the dead one reports the client
        number, adopt = choice
        opening = [seal(Kind.ADOPT, index, adopt)] if adopt is not None else []
        self._send(self._workers[number], index, frames, opening, seal(Kind.END, index))

    @staticmethod
    def _send(
        worker: _Worker,
        index: int,
        frames: Iterator[bytes],
        opening: list[bytes] | None = None,
        end: bytes | None = None,
    ) -> None:
        with worker.send_lock:
            try:
                for envelope in opening or []:
                    worker.conn.send_bytes(envelope)
                for frame in frames:
                    worker.conn.send_bytes(seal(Kind.FRAME, index, frame))
                if end is not None:
                    worker.conn.send_bytes(end)
            except OSError:
                pass  # the worker is gone: its reader reports its clients (EOF)

    def close(self) -> None:
        """Tell every worker to quit; kill one that does not exit in time."""
        self.placement.close()
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


def _spawn(number: int, settings: HostSettings) -> _Worker:
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
    return _Worker(number, process, Connection(ours.detach()))


def _worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:  # OpenMP and BLAS pools too, not only torch's intra-op threads
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    return env


def _read(worker: _Worker, federation: Federation, placement: Placement) -> None:
    """Deliver what a worker's clients send until its socket closes; then report its loss."""
    while True:
        try:
            kind, index, payload = unseal(worker.conn.recv_bytes())
        except (EOFError, OSError):
            break
        if kind is Kind.FRAME:
            if placement.speaker(index) == worker.number:  # a copy elsewhere is silent
                federation.receive(index, payload)
        elif kind is Kind.DONE:
            placement.release(worker.number)
        elif kind is Kind.FAILED:
            federation.failed(ClientFailure.from_json(payload))
    lost = placement.lost(worker.number)
    if not worker.quitting:
        federation.lost(lost, worker.describe_exit())
