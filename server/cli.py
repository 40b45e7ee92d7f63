"""``fl-server``: run one federated training job on ``port_base + job_id``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from fedsilo.common.cli import (
    ArgumentParser,
    add_config_flag,
    add_model_flags,
    exit_process,
    file_only_epilog,
    run_daemon,
)
from fedsilo.server.app import serve
from fedsilo.server.config import ServerConfig
from fedsilo.server.job_spec import JOB_FLAG_ALIASES, JobSpec
from fedsilo.server.run_files import MODEL_FILE

PROG = "fl-server"


def build_parser() -> ArgumentParser:
    """Return the fl-server argument parser: one flag per ServerConfig field (tables excepted)."""
    parser = ArgumentParser(
        prog=PROG,
        description="Run one federated training job. Each setting can also be set as "
        "FEDSILO_<NAME> or in --config; flags win over the environment, which wins over the file.",
        argument_default=argparse.SUPPRESS,
    )
    add_config_flag(parser)
    file_only = add_model_flags(
        parser.add_argument_group("the job (shared with fl-sim)"),
        ServerConfig,
        JobSpec.model_fields,
        JOB_FLAG_ALIASES,
    )
    own = [name for name in ServerConfig.model_fields if name not in JobSpec.model_fields]
    file_only += add_model_flags(parser.add_argument_group("the server"), ServerConfig, own)
    parser.epilog = file_only_epilog(file_only)
    return parser


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
