"""The namespace helper for the tests: ``deploy/netns.py`` (the one copy), loaded by file path,
and ``namespaces``, which a test's ``topology`` fixture opens.

``deploy/`` holds scripts, not a package, so the module is loaded with importlib and registered
in ``sys.modules`` (dataclasses look their module up there while the class is created).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import Daemon, Daemons, wait_for

MODULE_NAME = "fedsilo_deploy_netns"
SOURCE = Path(__file__).resolve().parents[2] / "deploy" / "netns.py"


def _load() -> ModuleType:
    """Load deploy/netns.py once per process."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, SOURCE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the namespace helper from {SOURCE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE_NAME]
        raise
    return module


if TYPE_CHECKING:  # type checkers read the source as a module; at run time it is loaded by path
    from deploy.netns import Topology
else:
    Topology = _load().Topology

__all__ = ["Topology", "namespaces", "start_client", "start_server"]


@contextmanager
def namespaces(orgs: int, daemons: Daemons) -> Iterator[Topology]:
    """Put a server and ``orgs`` organisations each in its own namespace, or skip the test."""
    net = Topology(orgs=orgs)
    try:
        net.create()
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as exc:
        net.destroy()
        detail = getattr(exc, "stderr", b"") or str(exc).encode()
        pytest.skip(f"network namespaces are not available here: {detail.decode().strip()}")
    try:
        yield net
    finally:
        daemons.stop_all()  # processes first, so nothing holds the namespaces
        net.destroy()


def start_server(
    daemons: Daemons, net: Topology, job_id: int, config: Path, out: Path, *args: str
) -> Daemon:
    """Start fl-server in the server's namespace on every address; wait until it listens."""
    server = daemons.start(
        "fl-server",
        "--job-id",
        str(job_id),
        "--host",
        "0.0.0.0",
        "--config",
        str(config),
        "--log-level",
        "debug",
        "--out",
        str(out),
        *args,
        name="server",
        prefix=net.exec_prefix(net.server_ns),
    )
    wait_for(lambda: server.has_event("server_listening"), 60, "the server to listen")
    return server


def start_client(
    daemons: Daemons, net: Topology, org: int, port: int, config: Path, *args: str
) -> Daemon:
    """Start fl-client ``org-N`` in organisation N's namespace, dialling the server on its link."""
    return daemons.start(
        "fl-client",
        "--server",
        f"{net.server_address(org)}:{port}",
        "--name",
        f"org-{org}",
        "--connect-timeout",
        "60",
        "--threads",
        "1",
        "--config",
        str(config),  # the job's task and options, which each organisation runs
        *args,
        name=f"org-{org}",
        prefix=net.exec_prefix(net.org_ns(org)),
    )
