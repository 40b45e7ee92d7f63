"""``fl-sim``: the same federated job as fl-server + fl-client, in one process, no sockets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fedsilo.common.cli import ArgumentParser, add_config_flag, exit_process, run_daemon
from fedsilo.common.logging import LEVELS
from fedsilo.server.cli import add_job_flags
from fedsilo.server.run_files import METRICS_FILE, MODEL_FILE
from fedsilo.sim.app import simulate, tty_progress
from fedsilo.sim.config import SimConfig

PROG = "fl-sim"


def build_parser() -> ArgumentParser:
    """Return the fl-sim argument parser; every flag maps to a SimConfig field."""
    parser = ArgumentParser(
        prog=PROG,
        description="Simulate a federation in one process with the server's own job loop and "
        "strategy and the client's own protocol. Flags can also be FEDSILO_<NAME> or --config.",
        argument_default=argparse.SUPPRESS,
    )
    add_config_flag(parser)
    add_job_flags(parser, min_clients_default=1)
    parser.add_argument("--clients", type=int, help="simulated clients (default: the task's own)")
    parser.add_argument("--out", type=Path, help="run folder (default runs/sim)")
    parser.add_argument("--device", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--log-level", choices=LEVELS, help="default warning")
    return parser


def run_simulation(config: SimConfig) -> int:
    """Simulate, print what ran and where the results are; 0 when every round completed."""
    result = simulate(config, on_progress=tty_progress(config.rounds))
    print(
        f"{PROG}: task {config.task}: {result.clients} clients, {result.train_examples} training "
        f"and {result.test_examples} held-out samples"
    )
    if not result.outcome.finished:
        print(f"{PROG}: the job aborted: {result.outcome.reason}", file=sys.stderr)
        return 1
    print(
        f"{PROG}: {result.outcome.rounds_completed} rounds; metrics in "
        f"{config.out / METRICS_FILE}, model in {config.out / MODEL_FILE}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-sim``."""
    return run_daemon(PROG, build_parser(), SimConfig, run_simulation, argv)


def entry_point() -> NoReturn:
    """Console-script entry: run main() and end the process with its exit code."""
    exit_process(main())


if __name__ == "__main__":
    entry_point()
