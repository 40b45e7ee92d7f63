"""``fl-server``: run one federated training job on ``port_base + job_id``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fedsilo.common.cli import (
    INSECURE_HELP,
    ArgumentParser,
    add_config_flag,
    add_switch,
    exit_process,
    run_daemon,
)
from fedsilo.common.compression import CODECS
from fedsilo.common.logging import LEVELS
from fedsilo.server.app import serve
from fedsilo.server.config import ServerConfig
from fedsilo.server.run_files import MODEL_FILE
from fedsilo.server.strategies import STRATEGIES

PROG = "fl-server"


def build_parser() -> ArgumentParser:
    """Return the fl-server argument parser; every flag maps to a ServerConfig field."""
    parser = ArgumentParser(
        prog=PROG,
        description="Run one federated training job. Each flag can also be set as FEDSILO_<NAME> "
        "or in --config.",
        argument_default=argparse.SUPPRESS,
    )
    add_config_flag(parser)
    add_job_flags(parser, min_clients_default=2)
    parser.add_argument("--job-id", type=int, help="job number; listens on port_base + job_id")
    parser.add_argument("--port-base", type=int, help="port of job 0 (default 50000)")
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--out", type=Path, help="run folder (default runs/job-<id>)")
    parser.add_argument("--round-timeout", type=float, help="seconds a round waits (default 300)")
    parser.add_argument(
        "--progress-timeout",
        type=float,
        help="seconds a client in a round may show no progress before it is cut off (default 30)",
    )
    add_switch(parser, "--resume", "continue from the checkpoint in the run folder (fresh if none)")
    parser.add_argument(
        "--join-timeout",
        type=float,
        help="seconds to wait for min_clients to be ready (default 600)",
    )
    parser.add_argument(
        "--start-clients", type=int, help="ready clients needed before round 1 (default min)"
    )
    parser.add_argument("--chunk-size", type=int, help="bytes per tensor chunk (default 1 MiB)")
    parser.add_argument("--max-clients", type=int, help="most concurrent sessions (default 1024)")
    parser.add_argument(
        "--update-norm-bound",
        type=float,
        help="L2 bound on an update's change to the global model (default: none)",
    )
    parser.add_argument(
        "--norm-bound-action",
        choices=("reject", "clip"),
        help="what happens to an update over the bound (default reject)",
    )
    parser.add_argument("--tls", type=Path, help="server bundle folder from fl-certs (mutual TLS)")
    add_switch(parser, "--insecure", INSECURE_HELP)
    parser.add_argument(
        "--health-port", type=int, help="also serve gRPC health, plaintext, on 127.0.0.1:PORT"
    )
    parser.add_argument("--log-level", choices=LEVELS, help="default info")
    return parser


def add_job_flags(parser: argparse.ArgumentParser, min_clients_default: int) -> None:
    """Add the flags of what a job trains and how; fl-server and fl-sim share them."""
    parser.add_argument("--task", help="built-in task or package.module:Name (default synthetic)")
    parser.add_argument("--rounds", type=int, help="training rounds (default 5)")
    parser.add_argument(
        "--min-clients", type=int, help=f"updates a round needs (default {min_clients_default})"
    )
    parser.add_argument("--seed", type=int, help="seed of model, data, sampling and training")
    parser.add_argument(
        "--strategy", help=f"{', '.join(STRATEGIES)}; options go in strategy_options"
    )
    parser.add_argument("--local-epochs", type=int, help="local epochs per round (default 1)")
    parser.add_argument("--batch-size", type=int, help="local batch size (default 32)")
    parser.add_argument("--learning-rate", "--lr", type=float, help="local SGD rate (default 0.1)")
    parser.add_argument("--proximal-mu", type=float, help="FedProx proximal weight (default 0)")
    parser.add_argument(
        "--clients-per-round", type=int, help="sample this many ready clients per round (seeded)"
    )
    parser.add_argument("--fraction", type=float, help="sample this fraction of ready clients")
    add_switch(
        parser, "--tensorboard", "also write TensorBoard scalars to <out>/tensorboard (extra)"
    )
    parser.add_argument(
        "--compression",
        choices=CODECS,
        help="how clients encode updates: full weights (none, default), deltas (delta), "
        "deltas cast (fp16, bf16), int8-quantized or top-k sparsified deltas",
    )
    parser.add_argument(
        "--topk-fraction", type=float, help="topk: fraction of each tensor sent, in (0, 1]"
    )
    add_switch(parser, "--per-channel", "int8: one scale per slice along the first dimension")


def run_job(config: ServerConfig) -> int:
    """Serve one job to its end; 0 when it finished or was stopped, 1 when it aborted."""
    outcome = serve(config)
    if outcome.already_finished:
        print(
            f"{PROG}: job {config.job_id} is finished ({outcome.rounds_completed} rounds; model in "
            f"{config.run_dir / MODEL_FILE}); nothing to resume",
            file=sys.stderr,
        )
        return 0
    if not outcome.finished and not outcome.stopped:
        print(f"{PROG}: job {config.job_id} aborted: {outcome.reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-server``."""
    return run_daemon(PROG, build_parser(), ServerConfig, run_job, argv)


def entry_point() -> NoReturn:
    """Console-script entry: run main() and end the process with its exit code."""
    exit_process(main())


if __name__ == "__main__":
    entry_point()
