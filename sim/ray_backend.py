"""The ray backend: the job in this process (the driver), the clients in Ray actors.

One actor per worker slot (``--workers``; default: the cluster's CPUs / ``--ray-num-cpus``),
each reserving ``--ray-num-cpus`` CPUs and ``--ray-num-gpus`` GPUs (a fraction shares a GPU)
and hosting clients ``i % actors`` in a ``ClientHost``. One outbox item's frames go to a client
in one actor call (``deliver``), which returns the frames the client sent while handling them:
wire bytes both ways, which Ray carries as bytes. An actor runs its calls one at a time in the
order they were made, so a model stream is handled whole before another client's.

A cluster is whatever ``ray.init`` finds: ``--ray-address`` (host:port, auto), else
``RAY_ADDRESS``, else one started with ``ray start`` on this machine, else a new local instance
(shut down at the end). Every node needs fedsilo, the task's package and its data.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import ray  # the optional extra; sim/app.py turns its absence into one ConfigError
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from fedsilo.common.errors import ConfigError, FedsiloError
from fedsilo.sim.config import SimConfig
from fedsilo.sim.host import ClientFailure, ClientHost, HostSettings
from fedsilo.sim.links import Federation

ACTOR_START_SECONDS = 300.0  # placing and starting the actors (each imports torch)


class ClientActor:
    """A Ray actor hosting a share of the clients (wrapped by ``ray.remote`` at run time)."""

    def __init__(self, settings: str) -> None:
        local = HostSettings.from_json(settings).apply()
        self._lock = threading.Lock()  # the clients' heartbeat threads send too
        self._sent: dict[int, list[bytes]] = {}
        self._host = ClientHost(local, self._collect)

    def node(self) -> str:
        """Return the id of the Ray node this actor runs on."""
        return str(ray.get_runtime_context().get_node_id())

    def hello(self, index: int) -> bytes:
        """Create client ``index``; return its Hello."""
        return self._host.start(index)

    def deliver(self, index: int, frames: list[bytes]) -> tuple[list[bytes], bytes | None]:
        """Hand frames to client ``index``; return what it sent, and its failure (JSON) if any."""
        failure = None
        for frame in frames:
            failure = self._host.deliver(index, frame)
            if failure is not None:
                break
        with self._lock:
            sent = self._sent.pop(index, [])
        return sent, None if failure is None else failure.to_json()

    def _collect(self, index: int, frame: bytes) -> None:
        with self._lock:
            self._sent.setdefault(index, []).append(frame)


class RayActors:
    """The actors of one simulation; implements the backend's hello/serve/forward/close."""

    def __init__(self, actors: list[Any], nodes: list[str], owns_ray: bool) -> None:
        self._actors = actors
        self.nodes = nodes  # the Ray node of each actor
        self._owns_ray = owns_ray
        self._dead: set[int] = set()
        self._lock = threading.Lock()
        self._federation: Federation | None = None

    @property
    def count(self) -> int:
        """Number of actors."""
        return len(self._actors)

    @classmethod
    def open(cls, config: SimConfig, clients: int, settings: HostSettings) -> RayActors:
        """Connect to (or start) Ray and start the actors; ConfigError if they do not fit."""
        owns_ray = not ray.is_initialized()
        if owns_ray:
            try:
                ray.init(
                    address=config.ray_address,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = config.ray_address or "RAY_ADDRESS or a local instance"
                raise FedsiloError(f"ray: cannot connect to {where}: {_first_line(exc)}") from exc
        try:
            return cls._start(config, clients, settings, owns_ray)
        except BaseException:
            if owns_ray:
                ray.shutdown()
            raise

    @classmethod
    def _start(
        cls, config: SimConfig, clients: int, settings: HostSettings, owns_ray: bool
    ) -> RayActors:
        cpus = float(ray.cluster_resources().get("CPU", 0))
        gpus = float(ray.cluster_resources().get("GPU", 0))
        count = config.workers if config.workers is not None else int(cpus // config.ray_num_cpus)
        count = max(1, min(count, clients))
        if count * config.ray_num_cpus > cpus or count * config.ray_num_gpus > gpus:
            raise ConfigError(
                f"workers: {count} actors of {config.ray_num_cpus:g} CPUs and "
                f"{config.ray_num_gpus:g} GPUs do not fit in the Ray cluster "
                f"({cpus:g} CPUs, {gpus:g} GPUs)"
            )
        remote = ray.remote(ClientActor).options(
            num_cpus=config.ray_num_cpus, num_gpus=config.ray_num_gpus, max_restarts=0
        )
        actors = [remote.remote(settings.to_json()) for _ in range(count)]
        try:
            nodes = ray.get([actor.node.remote() for actor in actors], timeout=ACTOR_START_SECONDS)
        except GetTimeoutError:
            for actor in actors:
                ray.kill(actor)
            raise FedsiloError(
                f"ray: {count} actors were not all placed and started within "
                f"{ACTOR_START_SECONDS:g} s (see `ray status`)"
            ) from None
        except RayActorError as exc:
            raise FedsiloError(f"ray: an actor failed to start: {_first_line(exc)}") from exc
        return cls(actors, nodes, owns_ray)

    def hello(self, index: int) -> bytes:
        """Create client ``index`` in its actor; return its Hello."""
        try:
            hello: bytes = ray.get(self._actors[index % self.count].hello.remote(index))
        except RayError as exc:
            raise FedsiloError(f"ray: starting client {index} failed: {_first_line(exc)}") from exc
        return hello

    def serve(self, federation: Federation) -> None:
        """Deliver what clients send to ``federation`` (as their calls return)."""
        self._federation = federation

    def forward(self, index: int, frames: Iterator[bytes], kind: str) -> None:
        """Hand one outbox item's frames to client ``index``; deliver what it sends back.

        Every item goes to the client's own actor, whatever its ``kind``: Ray's placement is
        by actor, and each client lives in one (``sim/placement.py`` is the local backend's).
        """
        federation = self._federation
        assert federation is not None, "serve() first"
        number = index % self.count
        if number in self._dead:
            return  # its clients were reported when the actor died
        try:
            sent, failure = ray.get(self._actors[number].deliver.remote(index, list(frames)))
        except RayActorError as exc:
            self._lost(number, exc, federation)
            return
        except RayError as exc:  # deliver itself raised: not the client's own failure
            federation.lost([index], f"ray: {_first_line(exc)}")
            return
        for frame in sent:
            federation.receive(index, frame)
        if failure is not None:
            federation.failed(ClientFailure.from_json(failure))

    def close(self) -> None:
        """End the actors, and Ray itself if this run started it."""
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def _lost(self, number: int, exc: BaseException, federation: Federation) -> None:
        with self._lock:
            if number in self._dead:
                return
            self._dead.add(number)
        indices = list(range(number, len(federation.links), self.count))
        node = self.nodes[number][:12]
        federation.lost(indices, f"Ray actor {number} (node {node}) died: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return type(exc).__name__ + (f": {lines[0]}" if lines else "")
