"""Run a whole federation in one process: the server's job loop, N in-process clients."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import torch

from fedsilo.client.policy import ClientPolicy
from fedsilo.client.protocol import ClientProtocol, LocalSettings
from fedsilo.common.devices import resolve_device
from fedsilo.common.errors import ConfigError, FedsiloError
from fedsilo.common.logging import get_logger
from fedsilo.server.app import make_job
from fedsilo.server.job import Job, JobOutcome
from fedsilo.sim.config import SimConfig
from fedsilo.sim.transport import InProcessLink
from fedsilo.tasks import load_task

PROGRESS_SECONDS = 0.2


@dataclass(frozen=True)
class SimResult:
    """How a simulation ended, and the size of the federation it ran."""

    outcome: JobOutcome
    clients: int
    train_examples: int
    test_examples: int


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


def simulate(
    config: SimConfig, on_progress: Callable[[tuple[int, int, int]], None] | None = None
) -> SimResult:
    """Run the job to its end with in-process clients; return its outcome and sizes."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    clients = client_count(config)
    server_config = config.server_config(clients)
    log = get_logger(job_id=0)
    job = make_job(server_config, log, checkpoint=None)
    # One model for all: clients work one at a time (work_lock) and each round's model
    # overwrites every weight, so hundreds of clients cost one model's memory.
    # The simulation's operator chose the task: every simulated client's policy runs exactly it.
    policy = ClientPolicy.pinned(config.task, config.task_options)
    local = LocalSettings(device=resolve_device(config.device), policy=policy, shared_models={})
    work_lock = threading.Lock()
    links = []
    for index in range(clients):  # Hello in order, so client ids are 0..N-1 as partitions
        session = job.open_session(f"sim:{index}", lambda: None, None)
        protocol = ClientProtocol(f"sim-{index:05d}", None, local, structlog.get_logger())
        link = InProcessLink(session, protocol, work_lock)
        link.start()
        links.append(link)
    outcome = _run_with_progress(job, config.rounds, on_progress)
    for link in links:
        link.join(timeout=60)
    failures = [link.failure for link in links if link.failure is not None]
    if failures:
        raise FedsiloError(f"a simulated client failed: {failures[0]}") from failures[0]
    return SimResult(
        outcome=outcome,
        clients=clients,
        train_examples=sum(
            link.protocol.data.train_examples for link in links if link.protocol.data
        ),
        test_examples=sum(link.protocol.data.test_examples for link in links if link.protocol.data),
    )


def _run_with_progress(
    job: Job, rounds: int, on_progress: Callable[[tuple[int, int, int]], None] | None
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
