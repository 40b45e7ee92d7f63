"""``fl-sim``: the same federated job as fl-server + fl-client, in one process, no sockets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from fedsilo.common.cli import ArgumentParser, add_config_flag, exit_process, run_daemon
from fedsilo.common.logging import LEVELS
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
    parser.add_argument("--task", help="built-in task or package.module:Name (default synthetic)")
    parser.add_argument("--clients", type=int, help="simulated clients (default: the task's own)")
    parser.add_argument("--clients-per-round", type=int, help="clients sampled per round")
    parser.add_argument("--fraction", type=float, help="fraction of clients sampled per round")
    parser.add_argument("--min-clients", type=int, help="updates a round needs (default 1)")
    parser.add_argument("--rounds", type=int, help="training rounds (default 5)")
    parser.add_argument("--strategy", help="fedavg, fedavgm, fedadam, fedyogi, fedadagrad, ...")
    parser.add_argument("--seed", type=int, help="seed of model, data, sampling and training")
    parser.add_argument("--local-epochs", type=int, help="local epochs per round (default 1)")
    parser.add_argument("--batch-size", type=int, help="local batch size (default 32)")
    parser.add_argument("--learning-rate", "--lr", type=float, help="local SGD rate (0.1)")
    parser.add_argument("--proximal-mu", type=float, help="FedProx proximal weight (default 0)")
    parser.add_argument("--out", type=Path, help="run folder (default runs/sim)")
    parser.add_argument("--device", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also write TensorBoard scalars (pip install 'fedsilo[tensorboard]')",
    )
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
