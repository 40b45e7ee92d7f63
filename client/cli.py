"""``fl-client``: take part in a federated job from inside an organisation's network."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

import torch

from fedsilo.client.config import ClientConfig
from fedsilo.client.connection import resolve_endpoint
from fedsilo.client.policy import PolicySettings
from fedsilo.client.session import FederationClient
from fedsilo.common.cli import (
    INSECURE_HELP,
    ArgumentParser,
    add_config_flag,
    add_model_flags,
    add_switch,
    exit_process,
    run_daemon,
)
from fedsilo.common.errors import PrivacyBudgetSpentError, StopRequestedError
from fedsilo.common.logging import LEVELS, get_logger
from fedsilo.common.stderr_router import routed_stderr

PROG = "fl-client"


def build_parser() -> ArgumentParser:
    """Return the fl-client argument parser; every flag maps to a ClientConfig field."""
    parser = ArgumentParser(
        prog=PROG,
        description="Join a federated job: dial the server, train on local data, send updates. "
        "Each flag can also be set as FEDSILO_<NAME> or in --config.",
        argument_default=argparse.SUPPRESS,
    )
    add_config_flag(parser)
    parser.add_argument(
        "--bundle", type=Path, help="folder from fl-certs: certificate, key, CA, connection file"
    )
    add_switch(parser, "--insecure", INSECURE_HELP)
    parser.add_argument(
        "--server", help="server address HOST:PORT (default: the bundle's connection file)"
    )
    parser.add_argument("--name", help="stable name (default: the bundle's, else the host name)")
    parser.add_argument("--job-id", type=int, help="job to join; the server refuses another")
    parser.add_argument("--data", type=Path, help="local data folder, for tasks that read files")
    parser.add_argument(
        "--partition",
        type=int,
        help="shard of a built-in dataset (default: the assigned client id)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        help="seconds to keep retrying an unreachable server (default 60)",
    )
    parser.add_argument(
        "--device", help="where to train: auto (a GPU when there is one), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for training; 1 suits several clients sharing one machine",
    )
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        help="processes that train each round with torch DDP: gloo on the CPU, one GPU each "
        "with nccl (default 1: in this process)",
    )
    parser.add_argument(
        "--out", type=Path, help="run folder for audit.jsonl (default runs/client-<name>)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        help="give up after this many seconds without progress either way (default 3600)",
    )
    add_policy_flags(parser)
    parser.add_argument("--log-level", choices=LEVELS, help="default info")
    return parser


def add_policy_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the client's policy (its task, the bounds), derived from its fields."""
    policy = parser.add_argument_group(
        "policy", "what this organisation runs; task_options go in --config or policy.toml"
    )
    add_model_flags(policy, PolicySettings)


def take_part(config: ClientConfig) -> int:
    """Run until the job finishes, SIGTERM/SIGINT or the DP budget ends it (0); failures raise."""
    log = get_logger()
    if config.insecure:
        log.warning("insecure_transport", detail="no TLS: traffic and identities are unprotected")
    if config.threads is not None:
        torch.set_num_threads(config.threads)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Raised in the main thread wherever it is (training, waiting, uploading): the upload
        # in flight is abandoned and the stream cancelled on the way out.
        raise StopRequestedError(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with routed_stderr({"client": config.name} if config.name else {}):
            FederationClient(config, resolve_endpoint(config), log).run()
    except StopRequestedError as stop:
        log.info("client_stopped", client=config.name, reason=str(stop))
    except PrivacyBudgetSpentError as spent:  # told the server; a clean end, exit 0
        log.warning("left_job", client=config.name, reason=str(spent))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-client``."""
    return run_daemon(PROG, build_parser(), ClientConfig, take_part, argv)


def entry_point() -> NoReturn:
    """Console-script entry: run main() and end the process with its exit code."""
    exit_process(main())


if __name__ == "__main__":
    entry_point()
