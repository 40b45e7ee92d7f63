"""A stand-in for `docker compose` on a machine without a Docker engine: it runs the services of
a compose file that use the fedsilo image as plain processes, so that deploy/README.md's
commands can be run as written (tests/integration/test_walkthrough.py puts it on PATH as
`docker`).

What a container would give is rebuilt, no more: the command in exec form; the image's ENV
(read from deploy/Dockerfile) and the service's environment, interpolated from the shell and
the project's .env the way compose does (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``$$``); each bind mount and named volume as the host folder it stands for, with container paths
in the command and environment rewritten to it; the image's /app as this checkout. Processes
share the host's network, so a published port must equal its container port, and a port a
container binds on its own loopback (the health port) is given a free host port by
FAKE_DOCKER_PORT_MAP ("8081=41234"). Anything else is refused with one line, exit 2.

    docker compose [-f FILE] [--profile P] up -d [--wait] [SERVICE...]
    docker compose [-f FILE] wait SERVICE...     report each exit; exit with the last code
    docker compose [-f FILE] cp SERVICE:PATH DEST
    docker compose [-f FILE] logs SERVICE...     (no -f)
    docker compose [-f FILE] down [-v]

State (pids, exit codes, logs, named volumes) lives in FAKE_DOCKER_STATE/<project>/. Every wait
is bounded by FAKE_DOCKER_TIMEOUT seconds (default 120).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.integration.docker_image import parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
IMAGE_APP = "/app"
POLL_SECONDS = 0.2
INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


class RefusedError(Exception):
    """What this stand-in cannot or will not do, in one line."""


def fail(message: str) -> NoReturn:
    """Print ``docker: message`` and exit 2."""
    print(f"docker: {message}", file=sys.stderr)
    sys.exit(2)


def timeout() -> float:
    """The bound on every wait, from FAKE_DOCKER_TIMEOUT."""
    return float(os.environ.get("FAKE_DOCKER_TIMEOUT", "120"))


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (comments and blank lines skipped)."""
    if not path.is_file():
        return {}
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Substitute variables in every string of ``value`` the way compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        escaped, name, operator, argument = match.groups()
        if escaped:
            return "$"
        current = variables.get(name)
        if operator == ":-":
            return current or argument
        if operator == "-":
            return argument if current is None else current
        if operator in (":?", "?") and not current:
            raise RefusedError(f"{name}: {argument or 'required'}")
        return current or ""

    return INTERPOLATION.sub(substitute, value)


@dataclass
class Project:
    """A parsed, interpolated compose file and where its state lives."""

    name: str
    directory: Path
    services: dict[str, dict[str, Any]]
    volumes: dict[str, Any]
    profiles: set[str]
    state: Path

    def service_dir(self, service: str) -> Path:
        """The folder holding one service's pid, exit code and log."""
        return self.state / "services" / service

    def active(self, service: str) -> bool:
        """Whether a service belongs to the default set or an active profile."""
        profiles = set(self.services[service].get("profiles") or [])
        return not profiles or bool(profiles & self.profiles)


def load_project(files: Sequence[str], profiles: Sequence[str]) -> Project:
    """Read the compose file (given, or compose.yaml / docker-compose.yml here)."""
    if len(files) > 1:
        raise RefusedError("one -f file only")
    if files:
        path = Path(files[0]).resolve()
    else:
        candidates = [Path(n) for n in ("compose.yaml", "compose.yml", "docker-compose.yml")]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise RefusedError(f"no compose file in {Path.cwd()}")
        path = found[0].resolve()
    variables = {**read_dotenv(path.parent / ".env"), **os.environ}
    data = interpolate(yaml.safe_load(path.read_text()), variables)
    name = str(data.get("name") or path.parent.name)
    state_root = os.environ.get("FAKE_DOCKER_STATE")
    if not state_root:
        raise RefusedError("FAKE_DOCKER_STATE is not set")
    return Project(
        name=name,
        directory=path.parent,
        services=data["services"],
        volumes=data.get("volumes") or {},
        profiles=set(profiles),
        state=Path(state_root) / name,
    )


def mounts(project: Project, service: str) -> dict[str, Path]:
    """Container path -> host folder of each mount of ``service``, plus the image's /app."""
    result = {IMAGE_APP: REPO}
    for entry in project.services[service].get("volumes") or []:
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry["source"], entry["target"]
        if source.startswith((".", "/", "~")):
            host = (project.directory / Path(source).expanduser()).resolve()
            if not host.exists():
                host.mkdir(parents=True)  # as docker does for a missing bind source
        else:
            if source not in project.volumes:
                raise RefusedError(f"{service}: volume {source} is not declared")
            host = project.state / "volumes" / source
            host.mkdir(parents=True, exist_ok=True)
        result[target] = host
    return result


def to_host(value: str, mapping: Mapping[str, Path]) -> str:
    """Rewrite a container path (or a :-separated list of them) to the host's."""
    longest_first = sorted(mapping.items(), key=lambda item: -len(item[0]))

    def one(part: str) -> str:
        for target, host in longest_first:
            if part == target or part.startswith(target.rstrip("/") + "/"):
                return str(host) + part[len(target.rstrip("/")) :]
        return part

    return ":".join(one(part) for part in value.split(":"))


def port_map() -> dict[str, str]:
    """FAKE_DOCKER_PORT_MAP: container-loopback port -> free host port."""
    pairs = [p for p in os.environ.get("FAKE_DOCKER_PORT_MAP", "").split(",") if p]
    return dict(pair.split("=", 1) for pair in pairs)


def check_ports(service: str, spec: dict[str, Any]) -> None:
    """Refuse a published port that differs from its container port (processes share one net)."""
    for entry in spec.get("ports") or []:
        parts = str(entry).split(":")
        if len(parts) < 2 or parts[-1] != parts[-2]:
            raise RefusedError(
                f"{service}: published port {entry} must equal its container port here"
            )


def as_process(
    project: Project, service: str, argv: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """The host command line and environment that stand for ``argv`` run in ``service``."""
    spec = project.services[service]
    if "fedsilo" not in str(spec.get("image", "")):
        raise RefusedError(f"{service}: image {spec.get('image')} cannot be run without an engine")
    mapping = mounts(project, service)
    ports = port_map()
    command = [ports.get(str(arg), to_host(str(arg), mapping)) for arg in argv]
    programs = Path(sys.executable).parent
    if command[0] == "python":
        command[0] = sys.executable
    elif (programs / command[0]).is_file():
        command[0] = str(programs / command[0])
    else:
        raise RefusedError(f"{service}: no program {command[0]} in the image")
    image = parse_dockerfile(REPO / "deploy" / "Dockerfile")
    environment = spec.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    container = {**image.env, **{k: str(v) for k, v in environment.items()}}
    host_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FEDSILO_", "FAKE_DOCKER_"))
    }
    host_env.pop("PYTHONPATH", None)  # a container sees only its image's and its own
    host_env.update({k: to_host(v, mapping) for k, v in container.items()})
    return command, host_env


def start(project: Project, service: str) -> None:
    """Start ``service`` detached, under a supervisor that records its pid and exit code."""
    spec = project.services[service]
    command = spec.get("command")
    if not isinstance(command, list):
        command = shlex.split(str(command))
    check_ports(service, spec)
    argv, env = as_process(project, service, [str(part) for part in command])
    folder = project.service_dir(service)
    if (folder / "plan.json").exists() and not (folder / "rc").exists():
        raise RefusedError(f"{service} is already running")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "home").mkdir(parents=True)
    plan = {"argv": argv, "env": env, "cwd": str(folder / "home"), "folder": str(folder)}
    (folder / "plan.json").write_text(json.dumps(plan))
    subprocess.Popen(
        [sys.executable, __file__, "_supervise", str(folder / "plan.json")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_until(lambda: (folder / "pid").exists() or (folder / "rc").exists(), f"{service} to start")


def supervise(plan_file: str) -> int:
    """Run one service's process; write its pid, then its exit code (SIGTERM is passed on)."""
    plan = json.loads(Path(plan_file).read_text())
    folder = Path(plan["folder"])
    with (folder / "log").open("wb") as log:
        try:
            child = subprocess.Popen(
                plan["argv"], env=plan["env"], cwd=plan["cwd"], stdout=log, stderr=log
            )
        except OSError as exc:  # as a container whose command cannot start: exit 127
            log.write(f"cannot start {plan['argv'][0]}: {exc}\n".encode())
            code = 127
        else:
            signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
            (folder / "pid").write_text(str(child.pid))
            code = child.wait()
    (folder / "rc.tmp").write_text(str(code))
    (folder / "rc.tmp").replace(folder / "rc")
    return 0


def wait_until(predicate: Any, what: str) -> None:
    """Poll ``predicate`` until it holds; refuse after FAKE_DOCKER_TIMEOUT seconds."""
    deadline = time.monotonic() + timeout()
    while not predicate():
        if time.monotonic() > deadline:
            raise RefusedError(f"timed out after {timeout():g}s waiting for {what}")
        time.sleep(POLL_SECONDS)


def exit_code(project: Project, service: str) -> int | None:
    """The service's exit code, None while it runs."""
    rc = project.service_dir(service) / "rc"
    return int(rc.read_text()) if rc.exists() else None


def last_line(project: Project, service: str) -> str:
    """The last line of a service's log, for messages."""
    log = project.service_dir(service) / "log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return lines[-1] if lines else "(no output)"


def healthy(project: Project, service: str) -> bool:
    """Run the service's healthcheck once; refuse if the service has exited."""
    code = exit_code(project, service)
    if code is not None:
        raise RefusedError(f"{service} exited with {code}: {last_line(project, service)}")
    test = project.services[service].get("healthcheck", {}).get("test")
    if not test:
        return True
    if test[0] != "CMD":
        raise RefusedError(f"{service}: only the CMD form of healthcheck is run")
    argv, env = as_process(project, service, [str(part) for part in test[1:]])
    probe = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=30)
    return probe.returncode == 0


def dependency_order(project: Project, names: Sequence[str]) -> Iterator[str]:
    """``names`` and what they depend on, dependencies first."""
    seen: set[str] = set()

    def visit(name: str) -> Iterator[str]:
        if name in seen:
            return
        seen.add(name)
        for dependency in project.services[name].get("depends_on") or []:
            yield from visit(dependency)
        yield name

    for name in names:
        yield from visit(name)


def up(project: Project, args: argparse.Namespace) -> int:
    """Start the chosen (or all active) services; with --wait, until each is healthy."""
    if not args.detach:
        raise RefusedError("only `up -d` (detached) is supported")
    chosen = args.services or [name for name in project.services if project.active(name)]
    for name in dependency_order(project, chosen):
        for dependency, rule in _conditions(project, name).items():
            if rule == "service_healthy":
                wait_until(lambda d=dependency: healthy(project, d), f"{dependency} to be healthy")
        start(project, name)
        if args.wait:
            wait_until(lambda n=name: healthy(project, n), f"{name} to be healthy")
    return 0


def _conditions(project: Project, service: str) -> dict[str, str]:
    """depends_on as service -> condition."""
    depends = project.services[service].get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: rule.get("condition", "service_started") for name, rule in depends.items()}


def wait(project: Project, args: argparse.Namespace) -> int:
    """Block until every named service has exited; say so as compose does, exit with the code."""
    code = 0
    for name in args.services:
        if not (project.service_dir(name) / "plan.json").exists():
            raise RefusedError(f"{name} was never started")
        wait_until(lambda n=name: exit_code(project, n) is not None, f"{name} to exit")
        code = exit_code(project, name) or 0
        print(f'container "{project.name}-{name}-1" exited with status code {code}')
    return code


def copy(project: Project, args: argparse.Namespace) -> int:
    """cp SERVICE:PATH DEST, through the service's mounts."""
    service, _, path = args.source.partition(":")
    if service not in project.services or not path:
        raise RefusedError(f"cp: give SERVICE:PATH, not {args.source}")
    source = Path(to_host(path, mounts(project, service)))
    if not source.exists() or str(source) == path:
        raise RefusedError(f"cp: {path} is not in a volume of {service}")
    destination = Path(args.dest)
    if destination.is_dir():
        destination = destination / PurePosixPath(path).name
    if source.is_dir():
        shutil.copytree(source, destination)
    else:
        shutil.copy2(source, destination)
    return 0


def logs(project: Project, args: argparse.Namespace) -> int:
    """Print each service's output so far."""
    for name in args.services or list(project.services):
        log = project.service_dir(name) / "log"
        if log.exists():
            sys.stdout.write(log.read_text(errors="replace"))
    return 0


def down(project: Project, args: argparse.Namespace) -> int:
    """Stop every service (SIGTERM, then SIGKILL after the timeout); -v removes the volumes."""
    for name in project.services:
        stop(project, name)
    shutil.rmtree(project.state / "services", ignore_errors=True)
    if args.volumes:
        shutil.rmtree(project.state / "volumes", ignore_errors=True)
    return 0


def stop(project: Project, name: str) -> None:
    """End one service's process if it still runs."""
    pid_file = project.service_dir(name) / "pid"
    if not pid_file.exists() or exit_code(project, name) is not None:
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while exit_code(project, name) is None and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    if exit_code(project, name) is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The supported subset of `docker compose`'s command line."""
    parser = argparse.ArgumentParser(prog="docker compose (stand-in)", exit_on_error=False)
    parser.add_argument("-f", "--file", action="append", default=[])
    parser.add_argument("--profile", action="append", default=[])
    commands = parser.add_subparsers(dest="command", required=True)
    run_up = commands.add_parser("up")
    run_up.add_argument("-d", "--detach", action="store_true")
    run_up.add_argument("--wait", action="store_true")
    run_up.add_argument("services", nargs="*")
    for name in ("wait", "logs"):
        commands.add_parser(name).add_argument("services", nargs="*")
    run_cp = commands.add_parser("cp")
    run_cp.add_argument("source")
    run_cp.add_argument("dest")
    commands.add_parser("down").add_argument("-v", "--volumes", action="store_true")
    return parser.parse_args(argv)


HANDLERS = {"up": up, "wait": wait, "cp": copy, "logs": logs, "down": down}


def main(argv: Sequence[str]) -> int:
    """Entry point: `docker compose ...` (and the supervisor, internally)."""
    if argv[:1] == ["_supervise"]:
        return supervise(argv[1])
    if argv[:1] != ["compose"]:
        fail(f"only `docker compose` is available here, not `docker {' '.join(argv)}`")
    try:
        args = parse(argv[1:])
        project = load_project(args.file, args.profile)
        return HANDLERS[args.command](project, args)
    except (RefusedError, argparse.ArgumentError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
