"""``fl-sim``: the same federated job as fl-server + fl-client, in one process, no sockets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from fedsilo.client.config import ClientConfig
from fedsilo.common.cli import (
    ArgumentParser,
    add_config_flag,
    add_model_flags,
    exit_process,
    file_only_epilog,
    run_daemon,
)
from fedsilo.server.config import ServerConfig
from fedsilo.server.job_spec import JOB_FLAG_ALIASES, JobSpec
from fedsilo.sim.app import simulate, tty_progress
from fedsilo.sim.config import SimConfig
from fedsilo.sim.host import JOINING, ClientFailure
from fedsilo.sim.summary import failures_line, outcome_lines, read_rows, where_line

PROG = "fl-sim"


def build_parser() -> ArgumentParser:
    """Return the fl-sim argument parser: one flag per SimConfig field (tables excepted)."""
    parser = ArgumentParser(
        prog=PROG,
        description="Simulate a federation in one process with the server's own job loop and "
        "strategy and the client's own protocol. Each setting can also be set as "
        "FEDSILO_<NAME> or in --config; flags win over the environment, which wins over the file.",
        argument_default=argparse.SUPPRESS,
    )
    add_config_flag(parser)
    file_only = add_model_flags(
        parser.add_argument_group("the job (shared with fl-server)"),
        SimConfig,
        JobSpec.model_fields,
        JOB_FLAG_ALIASES,
    )
    own = [name for name in SimConfig.model_fields if name not in JobSpec.model_fields]
    file_only += add_model_flags(parser.add_argument_group("the simulation"), SimConfig, own)
    parser.epilog = file_only_epilog(file_only)
    return parser


# Settings of the daemons that may share fl-sim's environment: never taken for a typo of ours
# (FEDSILO_MAX_CLIENTS is fl-server's, not a misspelt min_clients).
FOREIGN_SETTINGS = frozenset(ServerConfig.model_fields) | frozenset(ClientConfig.model_fields)


def report_failure(failure: ClientFailure) -> None:
    """Print one line for a simulated client that failed, as it happens."""
    then = "the simulation stops" if failure.stage == JOINING else "dropped from the job"
    print(f"{PROG}: {failure.line}; {then} (traceback in the log)", file=sys.stderr, flush=True)


def run_simulation(config: SimConfig) -> int:
    """Simulate and print a summary; 0 when every round completed, 1 when the job aborted."""
    result = simulate(config, on_progress=tty_progress(config.rounds), on_failure=report_failure)
    where = where_line(result.backend, result.workers, result.threads, result.nodes)
    print(
        f"{PROG}: task {config.task}: {result.clients} clients, {result.train_examples} training "
        f"and {result.test_examples} held-out samples; {result.backend} backend, {where}"
    )
    failed = failures_line(result.failures)
    if failed is not None:
        print(f"{PROG}: {failed}", file=sys.stderr)
    if not result.outcome.finished:
        print(f"{PROG}: the job aborted: {result.outcome.reason}", file=sys.stderr)
        return 1
    for line in outcome_lines(config, read_rows(config.out), result.seconds):
        print(f"{PROG}: {line}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-sim``."""
    return run_daemon(
        PROG, build_parser(), SimConfig, run_simulation, argv, foreign=FOREIGN_SETTINGS
    )


def entry_point() -> NoReturn:
    """Console-script entry: run main() and end the process with its exit code."""
    exit_process(main())


if __name__ == "__main__":
    entry_point()
