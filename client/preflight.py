"""What the client checks on its own before it dials the server: its data folder and its task.

A wrong ``--data`` or task options its task refuses would otherwise surface only after the
server admitted the client, as a failure in the middle of a job.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fedsilo.client.policy import ClientPolicy
from fedsilo.common.errors import ConfigError
from fedsilo.tasks.loading import instantiate_task


def check_data_folder(path: Path | None) -> None:
    """Raise ConfigError unless ``path`` is None or a folder this process may list and read."""
    if path is None:
        return
    shown = f"{path} ({path.resolve()})" if not path.is_absolute() else str(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"data: {shown} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"data: cannot look at {shown}: {exc.strerror}") from exc
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"data: {shown} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"data: {shown} is a folder this user may not read")


def check_task(policy: ClientPolicy) -> None:
    """Build the operator's own task once with its options; TaskLoadError if it refuses them.

    (Its class was imported and its options checked against the constructor's signature when
    the policy was resolved; this runs the constructor's own checks of the values.)
    """
    if policy.task_class is None or policy.identity is None:
        return  # a built-in task the server will name: its options come with the job
    instantiate_task(policy.task_class, policy.options, policy.identity.name)
