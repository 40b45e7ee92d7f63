"""Run a whole federation on one machine or a Ray cluster: the server's job in this process
(the driver), the clients in worker processes, Ray actors, or this process (``--workers 0``).

Whatever the backend, every message crosses as its wire form and the job folds updates in
client-id order, while each client's training is deterministic from its seed: the final model
is the same, bit for bit, for any backend and worker count (with the same ``--threads``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from fedsilo.client.policy import ClientPolicy
from fedsilo.client.protocol import LocalSettings
from fedsilo.common.devices import resolve_device
from fedsilo.common.errors import ConfigError
from fedsilo.common.logging import get_logger
from fedsilo.server.app import make_job
from fedsilo.server.job import Job, JobOutcome
from fedsilo.sim.config import SimConfig
from fedsilo.sim.host import ClientFailure, HostSettings, make_protocol
from fedsilo.sim.links import Federation
from fedsilo.sim.transport import InProcessLink
from fedsilo.tasks import load_task

PROGRESS_SECONDS = 0.2
LINK_SECONDS = 60.0  # how long a client's stream may take to end after the job did


@dataclass(frozen=True)
class SimResult:
    """How a simulation ended, the size of the federation it ran, and where it ran."""

    outcome: JobOutcome
    clients: int
    train_examples: int
    test_examples: int
    backend: str = "local"
    workers: int = 0  # worker processes or actors; 0: the clients ran in this process
    threads: int | None = None  # torch threads per worker (None: torch's default)
    nodes: int = 1  # machines the workers ran on (Ray nodes)
    seconds: float = 0.0  # wall clock of the job, from the first Hello to its end
    failures: list[ClientFailure] = field(default_factory=list)


class Backend(Protocol):
    """Where the clients run: creates them, carries frames to them; frames back go to the
    Federation given to ``serve``."""

    def hello(self, index: int) -> bytes:
        """Create client ``index``; return the wire bytes of its Hello."""

    def serve(self, federation: Federation) -> None:
        """Start delivering what the clients send to ``federation``."""

    def forward(self, index: int, frames: Iterator[bytes], kind: str) -> None:
        """Hand one outbox item's frames (opened by a ``kind`` message) to client ``index``,
        in one piece."""

    def close(self) -> None:
        """End the workers (bounded); idempotent."""


def client_count(config: SimConfig) -> int:
    """Return --clients, or the number of partitions the task itself has."""
    if config.clients is not None:
        return config.clients
    task = load_task(config.task, config.task_options)
    count: Callable[[], int] | None = getattr(task, "num_partitions", None)
    if count is None:
        raise ConfigError(
            f"clients: task {config.task!r} has no natural client count; give --clients"
        )
    return int(count())


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_workers(config: SimConfig, clients: int) -> int:
    """Worker processes of the local backend: --workers, else the CPU count; at most clients."""
    wanted = config.workers if config.workers is not None else cpu_count()
    return min(wanted, clients)


def worker_threads(config: SimConfig, workers: int) -> int | None:
    """Torch threads per worker: --threads, else 1 with several local workers (so that they
    do not oversubscribe the CPUs), or a Ray actor's own CPUs."""
    if config.threads is not None:
        return config.threads
    if config.backend == "ray":
        return max(1, int(config.ray_num_cpus))
    return 1 if workers > 1 else None


def host_settings(config: SimConfig, threads: int | None) -> HostSettings:
    """What each worker or actor is set up with."""
    return HostSettings(
        device=config.device,
        threads=threads,
        log_level=config.log_level,
        task=config.task,
        task_options=dict(config.task_options),
        record_dp=dp.model_dump() if (dp := config.dp_policy()) is not None else None,
        sys_path=[path for path in sys.path if path],
    )


def simulate(
    config: SimConfig,
    on_progress: Callable[[tuple[int, int, int]], None] | None = None,
    on_failure: Callable[[ClientFailure], None] | None = None,
) -> SimResult:
    """Run the job to its end with simulated clients; return its outcome and sizes.

    A client that fails is reported to ``on_failure`` and dropped, or stops the job if it had
    not joined yet (``sim/links.py``); never a hang.
    """
    clients = client_count(config)
    server_config = config.server_config(clients)
    if config.threads is not None:
        torch.set_num_threads(config.threads)  # the driver's own work: folding updates
    if config.backend == "local":
        resolve_device(config.device)  # a device that is not here: one ConfigError, here
        workers = local_workers(config, clients)
    else:
        workers = 0  # decided by the Ray backend once it sees the cluster
    job = make_job(server_config, get_logger(job_id=0), checkpoint=None)
    federation = Federation(job, on_failure)
    started = time.monotonic()
    nodes = 1
    if config.backend == "local" and workers == 0:
        outcome, examples = _run_in_process(config, job, clients, federation, on_progress)
        threads = config.threads
    else:
        backend, workers, threads, nodes = _open_backend(config, clients, workers)
        try:
            outcome = _run_with_backend(backend, job, clients, federation, on_progress)
        finally:
            backend.close()
        examples = federation.examples()
    return SimResult(
        outcome=outcome,
        clients=clients,
        train_examples=examples[0],
        test_examples=examples[1],
        backend=config.backend,
        workers=workers,
        threads=threads,
        nodes=nodes,
        seconds=time.monotonic() - started,
        failures=list(federation.failures),
    )


def _open_backend(
    config: SimConfig, clients: int, workers: int
) -> tuple[Backend, int, int | None, int]:
    """Start the workers or actors; return the backend, their number, threads each, nodes."""
    if config.backend == "ray":
        try:
            from fedsilo.sim.ray_backend import RayActors
        except ImportError as exc:
            raise ConfigError(
                f"backend: ray needs the ray extra (pip install 'fedsilo[ray]'): {exc}"
            ) from exc
        threads = worker_threads(config, 0)
        actors = RayActors.open(config, clients, host_settings(config, threads))
        return actors, actors.count, threads, len(set(actors.nodes))
    from fedsilo.sim.local import LocalWorkers
    from fedsilo.sim.placement import free_placement

    threads = worker_threads(config, workers)
    free = free_placement(config.placement, config.task)
    backend = LocalWorkers(workers, clients, host_settings(config, threads), free)
    return backend, workers, threads, 1


def _run_with_backend(
    backend: Backend,
    job: Job,
    clients: int,
    federation: Federation,
    on_progress: Callable[[tuple[int, int, int]], None] | None,
) -> JobOutcome:
    for index in range(clients):  # Hello in order, so client ids are 0..N-1 as partitions
        session = job.open_session(f"sim:{index}", lambda: None, None)
        link = federation.add(session, backend.forward)
        link.receive(backend.hello(index))
    backend.serve(federation)
    for link in federation.links:
        link.start()
    outcome = _run_with_progress(job, on_progress)
    deadline = time.monotonic() + LINK_SECONDS
    for link in federation.links:
        link.join(max(0.0, deadline - time.monotonic()))
    return outcome


def _run_in_process(
    config: SimConfig,
    job: Job,
    clients: int,
    federation: Federation,
    on_progress: Callable[[tuple[int, int, int]], None] | None,
) -> tuple[JobOutcome, tuple[int, int]]:
    # One model for all: clients work one at a time (work_lock) and each round's model
    # overwrites every weight, so hundreds of clients cost one model's memory.
    local = LocalSettings(
        device=resolve_device(config.device),
        policy=ClientPolicy.pinned(config.task, config.task_options, dp=config.dp_policy()),
        shared_models={},
    )
    work_lock = threading.Lock()
    links = []
    for index in range(clients):  # Hello in order, so client ids are 0..N-1 as partitions
        session = job.open_session(f"sim:{index}", lambda: None, None)
        protocol = make_protocol(index, local)
        link = InProcessLink(
            session, protocol, work_lock, index=index, on_failure=federation.report
        )
        link.start()
        links.append(link)
    outcome = _run_with_progress(job, on_progress)
    deadline = time.monotonic() + LINK_SECONDS
    for link in links:
        link.join(timeout=max(0.0, deadline - time.monotonic()))
    datas = [link.protocol.data for link in links if link.protocol.data is not None]
    return outcome, (
        sum(data.train_examples for data in datas),
        sum(data.test_examples for data in datas),
    )


def _run_with_progress(
    job: Job, on_progress: Callable[[tuple[int, int, int]], None] | None
) -> JobOutcome:
    if on_progress is None:
        return job.run()
    done = threading.Event()

    def report() -> None:
        while not done.wait(PROGRESS_SECONDS):
            on_progress(job.progress())

    reporter = threading.Thread(target=report, name="progress", daemon=True)
    reporter.start()
    try:
        return job.run()
    finally:
        done.set()
        reporter.join()
        on_progress(job.progress())


def tty_progress(rounds: int) -> Callable[[tuple[int, int, int]], None] | None:
    """Return a progress-bar callback for a terminal (rounds, clients done), else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=rounds, unit="round", file=sys.stderr)

    def update(progress: tuple[int, int, int]) -> None:
        completed, delivered, selected = progress
        bar.update(completed - bar.n)
        bar.set_postfix_str(f"clients {delivered}/{selected}", refresh=True)
        if completed >= rounds:
            bar.close()

    return update
