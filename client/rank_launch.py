"""Start a round's training ranks with torch's elastic launcher, on a store only this host reaches.

``launch`` runs ``torch.distributed.launcher.api.elastic_launch`` in the calling (main) thread:
the elastic agent starts N worker processes (``python -m fedsilo.client.rank_entry FOLDER
CLIENT_PID``: a binary, so nothing is pickled to start them), watches them every 50 ms and
returns when all have exited. One worker that fails (killed, or exits non-zero) makes the
agent stop the others (SIGTERM, SIGKILL after ``SHUTDOWN_GRACE``) and ``launch`` raise
LocalTrainingError naming it.
``max_restarts`` is 0: a failed round is left, and the next round is a fresh launch.

The rendezvous (``loopback_store``): the client binds a socket to 127.0.0.1 port 0 and listens
on it *before* handing it to a c10d ``TCPStore`` (``master_listen_fd``), so the OS picks a free
port and nothing can take it in between (no probe-then-bind race); two clients or jobs on one
host never share one. The agent's static rendezvous and the workers' ``init_process_group``
reach that same store (``multi_tenant``: one server per port in this process; the workers use
the agent's store, ``TORCHELASTIC_USE_AGENT_STORE``). Not torch's ``c10d`` rendezvous backend:
it stores its state pickled in the store and unpickles what it reads back, and it opens a
second store, for the workers, listening on every interface. Single-node rounds need neither.

Signals: the agent installs handlers for SIGTERM and SIGINT while it runs (they stop the
workers, then raise ``SignalException``); ``launch`` turns that into StopRequestedError and
puts fl-client's own handlers back afterwards, with the signals blocked while it does.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from torch.distributed import TCPStore  # type: ignore[attr-defined]  # (export mypy can't see)
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from fedsilo.common.errors import LocalTrainingError, StopRequestedError

WORKER_MODULE = "fedsilo.client.rank_entry"
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
LOOPBACK = "127.0.0.1"
MONITOR_SECONDS = 0.05  # how often the agent looks at its workers
SHUTDOWN_GRACE = 5  # seconds the other ranks get after SIGTERM before SIGKILL
RENDEZVOUS_SECONDS = 120  # for the ranks to start (import torch, build the task) and meet
MAX_REASON = 200

Log = structlog.typing.FilteringBoundLogger


@contextmanager
def loopback_store() -> Iterator[int]:
    """Host a TCPStore on 127.0.0.1 at a port the OS chose; yield the port while it serves."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        sock.listen(128)
        port = int(sock.getsockname()[1])
    except OSError:
        sock.close()
        raise
    # The store owns the listening socket from here on (and closes it when it goes away).
    store = TCPStore(
        LOOPBACK,
        port,
        is_master=True,
        multi_tenant=True,
        master_listen_fd=sock.detach(),
        wait_for_workers=False,
        timeout=timedelta(seconds=RENDEZVOUS_SECONDS),
    )
    try:
        yield port
    finally:
        del store


def launch(nproc: int, folder: Path, run_id: str, log: Log) -> None:
    """Run ``nproc`` ranks on ``folder``'s round to their end; raise if one fails or on a signal."""
    with loopback_store() as port, _torch_logs_to(log):
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=run_id,
            rdzv_backend="static",
            rdzv_endpoint=f"{LOOPBACK}:{port}",
            rdzv_configs={"rank": 0, "timeout": RENDEZVOUS_SECONDS},
            max_restarts=0,
            monitor_interval=MONITOR_SECONDS,
            local_addr=LOOPBACK,
            logs_specs=DefaultLogsSpecs(log_dir=str(folder / "elastic")),
            signals_to_handle=",".join(sig.name for sig in HANDLED_SIGNALS),
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        log.info("ranks_started", nproc=nproc, rendezvous=f"{LOOPBACK}:{port}")
        saved = _handlers()
        try:
            try:
                elastic_launch(config, sys.executable)(
                    "-m", WORKER_MODULE, str(folder), str(os.getpid())
                )
            finally:
                _restore(saved)
        except SignalException as exc:
            raise StopRequestedError(f"stopped by {signal.Signals(exc.sigval).name}") from None
        except ChildFailedError as exc:
            raise LocalTrainingError(describe_failures(exc.failures, nproc)) from None


def describe_failures(failures: Mapping[int, ProcessFailure], nproc: int) -> str:
    """Say in one line which rank failed first and how (killed by a signal, or its error)."""
    # The agent records the ranks that failed, then those it stopped (SIGTERM). A rank killed
    # by another signal is the likeliest cause: its peers, waiting in a collective, may notice
    # the lost connection and exit with an error within the same poll. min() keeps the
    # agent's order among equals.
    rank, first = min(failures.items(), key=lambda item: _blame_order(item[1].exitcode))
    if first.exitcode < 0:
        how = f"was killed by {first.signal_name()}"
    else:
        how = f"exited with code {first.exitcode}"
        detail = _error_message(first.error_file_data)
        if detail:
            how += f": {detail}"
    line = f"rank {rank} of {nproc} (pid {first.pid}) {how}"
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."


def _blame_order(exitcode: int) -> int:
    """0 for a rank killed by a signal (not SIGTERM), 1 for an error exit, 2 for SIGTERM."""
    if exitcode == -signal.SIGTERM:
        return 2
    return 1 if exitcode > 0 else 0


def _error_message(data: Mapping[str, Any]) -> str:
    """The exception line a rank recorded in its error file (torch's format), if any."""
    message = data.get("message") if data else None
    if isinstance(message, dict):
        message = message.get("message")
    return " ".join(str(message).split()) if message else ""


def _handlers() -> dict[signal.Signals, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # the agent installs no handlers off the main thread either
    return {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}


def _restore(saved: dict[signal.Signals, Any]) -> None:
    """Put back the handlers the agent replaced; a signal meanwhile waits, then reaches ours."""
    if not saved:
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, list(saved))
    try:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class _ToStructlog(logging.Handler):
    """torch's elastic agent logs with the standard library: pass its lines on as ours."""

    def __init__(self, log: Log) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.log(record.levelno, "torch_elastic", message=record.getMessage()[:MAX_REASON])


@contextmanager
def _torch_logs_to(log: Log) -> Iterator[None]:
    """Route torch.distributed's log lines into this client's log while the ranks run."""
    logger = logging.getLogger("torch.distributed")
    # Only ours: torch installs a plain-text stderr handler of its own on this logger.
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers = [_ToStructlog(log)]
    logger.propagate = False  # not also through logging's last-resort handler
    try:
        yield
    finally:
        logger.handlers = handlers
        logger.propagate = propagate
