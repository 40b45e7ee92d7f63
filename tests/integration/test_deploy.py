"""The deployment kit: the compose file names only settings the daemons accept, with one network
per organisation and read-only certificates; the health probe tells a serving server from a
stopped one; the namespace script runs the compose topology for real, without Docker. The files
for several hosts publish the job's port, mount each member's bundle, task and data read-only,
and keep monitoring in an optional profile that scrapes the server's loopback admin port."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from fedsilo.client.cli import build_parser as client_parser
from fedsilo.client.config import ClientConfig
from fedsilo.common.cli import flag_values
from fedsilo.common.settings import load_config
from fedsilo.server.cli import build_parser as server_parser
from fedsilo.server.config import ServerConfig
from tests.integration.conftest import REPO, Daemons, free_port
from tests.integration.docker_image import parse_dockerfile
from tests.integration.fake_docker import interpolate

DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ORGS = ("org-a", "org-b", "org-c")
NETNS_TIMEOUT = 300


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file, parsed."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def networks_of(service: dict[str, Any]) -> set[str]:
    """The networks a service joins (list or mapping form)."""
    return set(service.get("networks") or [])


def mounts_of(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only) of a service's volumes, short or long syntax."""
    mounts = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            mounts[target] = (source, "ro" in ",".join(mode).split(","))
        else:
            mounts[entry["target"]] = (entry["source"], bool(entry.get("read_only")))
    return mounts


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as compose would pass it with no variables set on the host."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    # Only the ${VAR:-default} form is used: without VAR, compose substitutes the default.
    return {
        key: value.split(":-", 1)[1].rstrip("}") if str(value).startswith("${") else str(value)
        for key, value in environment.items()
    }


def parse_command(parser: argparse.ArgumentParser, command: list[str]) -> argparse.Namespace:
    """Parse ``command[1:]``; every flag must be spelled out (argparse would take a prefix)."""
    known = {flag for action in parser._actions for flag in action.option_strings}
    flags = [str(part).split("=", 1)[0] for part in command[1:] if str(part).startswith("-")]
    assert set(flags) <= known, f"{command[0]} has no {sorted(set(flags) - known)}"
    return parser.parse_args([str(part) for part in command[1:]])


def server_config(compose: dict[str, Any]) -> ServerConfig:
    """The server service's command, parsed by fl-server's parser and validated."""
    service = compose["services"]["server"]
    command = service["command"]
    assert isinstance(command, list), "exec form: command must be a list"
    assert command[0] == "fl-server"
    args = parse_command(server_parser(), command)
    return load_config(ServerConfig, flag_values(args), None, compose_environment(service))


def client_config(compose: dict[str, Any], org: str) -> ClientConfig:
    """An organisation's command, parsed by fl-client's parser and validated."""
    service = compose["services"][org]
    command = service["command"]
    assert isinstance(command, list), "exec form: command must be a list"
    assert command[0] == "fl-client"
    args = parse_command(client_parser(), command)
    return load_config(ClientConfig, flag_values(args), None, compose_environment(service))


def test_compose_runs_a_server_and_three_organisations(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"server", *ORGS}
    assert set(compose["networks"]) == {f"net-{org}" for org in ORGS}


def test_each_organisation_network_holds_only_that_organisation_and_the_server(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for org in ORGS:
        members = {
            name for name, service in services.items() if f"net-{org}" in networks_of(service)
        }
        assert members == {"server", org}
    assert networks_of(services["server"]) == {f"net-{org}" for org in ORGS}


def test_compose_commands_name_only_settings_the_daemons_accept(compose: dict[str, Any]) -> None:
    server = server_config(compose)
    assert server.host == "0.0.0.0"
    assert server.tls == Path("/certs")
    assert server.out == Path("/runs")
    assert server.health_port is not None
    assert server.min_clients == len(ORGS)
    assert not server.resume  # FEDSILO_RESUME defaults to false
    for org in ORGS:
        client = client_config(compose, org)
        assert client.bundle == Path("/bundle")
        assert client.server == f"server:{server.port}"  # the service name, the job's port


def test_certificates_are_mounted_read_only_and_runs_on_a_named_volume(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    server_mounts = mounts_of(services["server"])
    assert server_mounts["/certs"] == ("./certs/server", True)
    runs_source, _ = server_mounts["/runs"]
    assert runs_source in compose["volumes"]
    for org in ORGS:
        assert mounts_of(services[org]) == {"/bundle": (f"./certs/{org}", True)}


def test_organisations_start_once_the_server_is_healthy_on_its_health_port(
    compose: dict[str, Any],
) -> None:
    test = compose["services"]["server"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert PurePosixPath(test[2]).name == "healthcheck.py"
    assert int(test[-1]) == server_config(compose).health_port
    for org in ORGS:
        depends = compose["services"][org]["depends_on"]
        assert depends["server"]["condition"] == "service_healthy"


def test_docker_compose_accepts_the_file() -> None:
    try:
        probe = subprocess.run(
            ["docker", "compose", "version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"docker compose is not available here: {exc}")
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()
        pytest.skip(f"`docker compose version` fails here: {reason[0] if reason else ''}")
    check = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert check.returncode == 0, check.stderr


def probe_health(port: int) -> subprocess.CompletedProcess[str]:
    """Run deploy/healthcheck.py against 127.0.0.1:port."""
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), str(port)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_passes_while_the_server_serves_and_fails_once_it_stopped(
    daemons: Daemons, tmp_path: Path
) -> None:
    port, health_port = free_port(), free_port()
    server = daemons.server(
        0, port, "--health-port", str(health_port), "--out", str(tmp_path / "run")
    )
    serving = probe_health(health_port)
    assert serving.returncode == 0, serving.stderr
    server.process.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, server.tail()
    stopped = probe_health(health_port)
    assert stopped.returncode == 1
    (line,) = stopped.stderr.strip().splitlines()
    assert line.startswith(f"unhealthy: 127.0.0.1:{health_port}")


@pytest.mark.timeout(NETNS_TIMEOUT + 90)
def test_netns_federation_trains_with_three_organisations_and_refuses_the_rogue(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "netns"
    script = subprocess.Popen(
        [sys.executable, str(DEPLOY / "netns_federation.py"), "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        stdout, stderr = script.communicate(timeout=NETNS_TIMEOUT)
    except subprocess.TimeoutExpired:
        script.send_signal(signal.SIGINT)  # lets it stop its daemons and remove its namespaces
        try:
            script.communicate(timeout=60)
        finally:
            script.kill()
            script.wait(timeout=10)
        pytest.fail(f"netns_federation.py ran past {NETNS_TIMEOUT}s")
    if script.returncode == 2:
        pytest.skip(f"network namespaces are not available here: {stderr.strip()}")
    logs = "".join(
        f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        for log in sorted((workdir / "logs").glob("*.log"))
    )
    assert script.returncode == 0, f"{stderr}{logs}"
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 2
    assert summary["participants"] == sorted(ORGS)
    assert summary["rogue_refused"] is True
    assert summary["rogue_exit_code"] != 0
    assert summary["isolated"] is True
    assert (workdir / "run" / "model.pt").is_file()


# --- Several hosts: deploy/server/compose.yaml (the operator's) and deploy/member/compose.yaml

SERVER_HOST = DEPLOY / "server"
MEMBER_COMPOSE = DEPLOY / "member" / "compose.yaml"


def host_compose(path: Path, variables: dict[str, str] | None = None) -> dict[str, Any]:
    """A compose file as compose reads it with ``variables`` set (else every default)."""
    data = interpolate(yaml.safe_load(path.read_text()), variables or {})
    assert isinstance(data, dict)
    return data


def parsed_service(
    compose: dict[str, Any], name: str, parser: argparse.ArgumentParser, model: Any
) -> Any:
    """A service's exec-form command parsed by its daemon's parser, with its environment."""
    service = compose["services"][name]
    command = service["command"]
    assert isinstance(command, list), "exec form: command must be a list"
    args = parse_command(parser, command)
    environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    return load_config(model, flag_values(args), None, environment)


@pytest.mark.parametrize(
    "variables",
    [{}, {"JOB_ID": "4", "PORT_BASE": "51000", "JOB_PORT": "51004"}],
    ids=["defaults", "env-file"],
)
def test_the_server_host_publishes_the_job_port_and_mounts_its_bundle_and_task_read_only(
    variables: dict[str, str],
) -> None:
    compose = host_compose(SERVER_HOST / "compose.yaml", variables)
    server = parsed_service(compose, "server", server_parser(), ServerConfig)
    service = compose["services"]["server"]
    assert service["ports"] == [f"{server.port}:{server.port}"]
    assert server.host == "0.0.0.0" and server.tls == Path("/bundle")
    mounts = mounts_of(service)
    assert mounts["/bundle"] == ("./bundle", True)
    assert mounts["/task"] == ("./task", True)
    runs, read_only = mounts["/runs"]
    assert runs in compose["volumes"] and not read_only and server.out == Path("/runs")
    assert int(service["healthcheck"]["test"][-1]) == server.health_port
    assert "profiles" not in service and "networks" not in service  # default, not internal
    assert compose["name"] == f"fedsilo-job-{server.job_id}"  # one project (and volume) per job


def test_a_member_runs_with_only_its_bundle_task_and_data_mounted_read_only() -> None:
    compose = host_compose(MEMBER_COMPOSE)
    assert set(compose["services"]) == {"member"}
    client = parsed_service(compose, "member", client_parser(), ClientConfig)
    assert client.bundle == Path("/bundle") and client.data == Path("/data")
    assert client.server is None  # the address comes from the bundle's connection.json
    service = compose["services"]["member"]
    assert mounts_of(service) == {
        "/bundle": ("./bundle", True),
        "/task": ("./task", True),
        "/data": ("./data", True),
    }
    assert "ports" not in service  # dials out only
    data_dir = mounts_of(host_compose(MEMBER_COMPOSE, {"DATA_DIR": "/srv/x"})["services"]["member"])
    assert data_dir["/data"] == ("/srv/x", True)
    image_env = parse_dockerfile(DEPLOY / "Dockerfile").env
    assert "/task" in image_env["PYTHONPATH"].split(":")


def test_monitoring_is_an_optional_profile_scraping_the_servers_admin_port() -> None:
    compose = host_compose(SERVER_HOST / "compose.yaml")
    services = compose["services"]
    server = parsed_service(compose, "server", server_parser(), ServerConfig)
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for source, _ in mounts_of(services[name]).values():
            assert source in compose["volumes"] or (SERVER_HOST / source).exists(), source
    prometheus = services["prometheus"]
    assert prometheus["network_mode"] == "service:server"  # the server's loopback is its own
    config = yaml.safe_load((SERVER_HOST / "prometheus.yml").read_text())
    (scrape,) = config["scrape_configs"]
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"] == [{"targets": [f"127.0.0.1:{server.health_port}"]}]
    listen = next(a for a in prometheus["command"] if a.startswith("--web.listen-address="))
    sources = yaml.safe_load(
        (SERVER_HOST / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (source,) = sources["datasources"]
    assert source["url"] == f"http://server:{listen.rsplit(':', 1)[1]}"
    assert all(str(p).startswith("127.0.0.1:") for p in services["grafana"]["ports"])


@pytest.mark.parametrize("path", [SERVER_HOST / "compose.yaml", MEMBER_COMPOSE], ids=str)
def test_docker_compose_accepts_the_host_files(path: Path) -> None:
    try:
        probe = subprocess.run(
            ["docker", "compose", "version"], check=False, capture_output=True, timeout=30
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"docker compose is not available here: {exc}")
    if probe.returncode != 0:
        pytest.skip("`docker compose version` fails here")
    check = subprocess.run(
        ["docker", "compose", "-f", str(path), "--profile", "monitoring", "config", "-q"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
