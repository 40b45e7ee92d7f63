"""Which local worker serves each client's next model stream: the balance of a sampled round.

A round samples its clients at random, so with each client fixed in worker ``i % workers`` a
round of 10 clients on 2 workers splits 9/1 as often as 5/5: over fmnist-100's rounds 2-11
the busiest worker had 6.9 of the 10 clients on average, which caps 2 workers at 1.45 x one.
So a model stream goes to whichever worker is idle ("free" placement), when that cannot
change the result: the client keeps no state from one round to the next (``portable``). A
worker that has not hosted the client yet first adopts it: it joins a copy with the client's
InitConfig, silently (the client's Hello and Ready were sent once, by its first host), which
costs one ``load_data`` (16 ms for an fmnist client against 125 ms of training); a worker
prefers the clients it already holds. A worker holds at most ``depth`` streams (END/DONE,
``sim/frames.py``): the one it trains on and the next, so that it never waits for the driver
between two clients (a busy box schedules the driver's threads late); the others wait here,
and go to the least busy worker.

What a client says goes to the job only from the worker that served it last (its speaker);
that worker also gets the client's other messages (Finish, Abort), and its death drops the
clients it spoke for. With ``fixed`` placement, or a client that keeps state (a top-k
residual, SCAFFOLD's control variates, a DP-SGD budget, secure aggregation's keys), the
speaker is always the client's first host, as before.

Threads: the links' pumps call ``acquire`` and ``speaker``; the workers' readers call
``release`` and ``lost``; everything is under one Condition, which calls nothing outside.
"""

from __future__ import annotations

import threading

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.tasks.loading import BUILTIN_TASKS

# The codecs that keep a client's state across rounds (top-k's error-feedback residual).
STATEFUL_CODECS = ("topk",)


def free_placement(placement: str | None, task: str) -> bool:
    """Whether model streams may go to any idle worker: ``auto``, or by default a built-in task
    (whose ``train`` keeps nothing between rounds; a user's own task may, so it stays put)."""
    if placement is not None:
        return placement == "auto"
    return task in BUILTIN_TASKS


def portable(init: pb.InitConfig, record_dp: bool) -> bool:
    """Whether a client that joined with ``init`` keeps nothing of its own between rounds."""
    job = init.job
    return not (
        record_dp
        or job.require_dp
        or job.control_variates
        or job.HasField("secure_aggregation")
        or job.compression.codec in STATEFUL_CODECS
    )


class Placement:
    """The workers' business and each client's hosts (module docstring); thread-safe."""

    def __init__(self, workers: int, clients: int, free: bool, depth: int = 2) -> None:
        self.free = free
        self.depth = depth
        self._cond = threading.Condition()
        self._busy = [0] * workers  # streams sent and not DONE yet
        self._alive = [True] * workers
        self._closing = False
        self._speaker = [index % workers for index in range(clients)]
        self._hosts: list[set[int]] = [{index % workers} for index in range(clients)]
        self._portable = [False] * clients
        self._joins: dict[int, bytes] = {}  # a portable client's InitConfig frame
        self._waiting: set[int] = set()  # clients whose pump waits in acquire

    def home(self, index: int) -> int:
        """The worker that created client ``index`` (its Hello and Ready came from there)."""
        return index % len(self._busy)

    def joined(self, index: int, frame: bytes, record_dp: bool) -> None:
        """Note the InitConfig frame client ``index`` was sent: a copy elsewhere joins with it."""
        if not self.free:
            return
        message = pb.ServerMessage.FromString(frame)
        movable = message.HasField("init_config") and portable(message.init_config, record_dp)
        with self._cond:
            self._portable[index] = movable
            if movable:
                self._joins[index] = frame

    def acquire(self, index: int) -> tuple[int, bytes | None] | None:
        """Wait for a worker to serve client ``index``'s model stream; count it there.

        Return the worker and, if it does not host the client yet, the InitConfig frame it
        adopts the client with; None once the simulation closes or the worker(s) it could use
        are gone (that worker's reader reports the client).
        """
        with self._cond:
            self._waiting.add(index)
            try:
                while True:
                    if self._closing or not any(self._alive):
                        return None
                    if not self._portable[index] and not self._alive[self._speaker[index]]:
                        return None
                    worker = self._choose(index)
                    if worker is not None:
                        break
                    self._cond.wait()
            finally:
                self._waiting.discard(index)
                self._cond.notify_all()  # a worker left to this client may go to another now
            self._busy[worker] += 1
            self._speaker[index] = worker
            adopt = None if worker in self._hosts[index] else self._joins[index]
            self._hosts[index].add(worker)
            return worker, adopt

    def _choose(self, index: int) -> int | None:
        room = [w for w, busy in enumerate(self._busy) if busy < self.depth and self._alive[w]]
        if not self._portable[index]:
            return self._speaker[index] if self._speaker[index] in room else None
        if not room:
            return None
        least = min(self._busy[w] for w in room)
        idle = [w for w in room if self._busy[w] == least]
        hosting = [w for w in idle if w in self._hosts[index]]
        if hosting:
            return self._speaker[index] if self._speaker[index] in hosting else hosting[0]
        # An idle worker that another waiting client already lives in is left to that client,
        # which takes it next (it is waiting on the same condition): no adoption is wasted.
        spare = [w for w in idle if not any(w in self._hosts[j] for j in self._waiting - {index})]
        return spare[0] if spare else None

    def waiting(self) -> set[int]:
        """The clients whose model stream waits for a worker now (for tests and logs)."""
        with self._cond:
            return set(self._waiting)

    def speaker(self, index: int) -> int:
        """The worker client ``index`` last worked in: its messages go there, and come from."""
        with self._cond:
            return self._speaker[index]

    def release(self, worker: int) -> None:
        """Count one stream of ``worker`` done (its DONE came): another may go there."""
        with self._cond:
            self._busy[worker] = max(0, self._busy[worker] - 1)
            self._cond.notify_all()

    def lost(self, worker: int) -> list[int]:
        """Mark ``worker`` dead; return the clients it spoke for (they are lost with it)."""
        with self._cond:
            self._alive[worker] = False
            self._busy[worker] = 0
            self._cond.notify_all()
            for hosts in self._hosts:
                hosts.discard(worker)
            return [index for index, w in enumerate(self._speaker) if w == worker]

    def close(self) -> None:
        """Let every waiting pump go: the simulation is over."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
