"""The admin port in-process: its pages, read-only, loopback-only Host, bounded, bind errors."""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from fedsilo.common.errors import ConfigError, PortInUseError
from fedsilo.common.settings import load_config
from fedsilo.server.admin import AdminServer
from fedsilo.server.config import ServerConfig, is_loopback
from fedsilo.server.status import StatusView
from fedsilo.server.status_metrics import register_state_metrics
from tests.server.status_helpers import config, federation


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str, method: str = "GET", host: str | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": host} if host is not None else {}
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminServer]:
    tmp_path = tmp_path_factory.mktemp("admin")
    fed = federation(tmp_path)
    settings = config(tmp_path, health_port=free_port())
    view = StatusView(settings, fed.state, fed.telemetry)
    register_state_metrics(view)
    server = AdminServer(settings, _quiet_log())
    server.start(view)
    try:
        yield server
    finally:
        server.stop()


def _quiet_log():  # type: ignore[no-untyped-def]
    return structlog.get_logger().bind(job_id=3)


def test_the_status_page_and_its_assets_come_from_the_package(admin: AdminServer) -> None:
    status, headers, body = get(admin.port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="static/status.js"' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, headers, body = get(admin.port, "/static/status.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b'fetch("status"' in body
    status, headers, _ = get(admin.port, "/static/status.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")


def test_status_is_the_snapshot_as_json(admin: AdminServer) -> None:
    status, headers, body = get(admin.port, "/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    document = json.loads(body)
    assert document["job"]["job_id"] == 3 and document["job"]["round"] == 2
    assert {c["name"] for c in document["clients"] if c["connected"]} == {
        "org-down",
        "org-train",
        "org-up",
        "org-done",
        "org-new",
    }


def test_metrics_are_prometheus_text_and_health_answers(admin: AdminServer) -> None:
    status, headers, body = get(admin.port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"fedsilo_job_phase", "fedsilo_clients_connected"} <= names
    status, _, body = get(admin.port, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "serving"}


@pytest.mark.parametrize(
    "path", ["/nope", "/static/../admin.py", "/static/index.html", "/static/", "/%2e%2e/config.py"]
)
def test_anything_else_is_not_found(admin: AdminServer, path: str) -> None:
    status, _, body = get(admin.port, path)
    assert status == 404
    assert "no such page" in json.loads(body)["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_admin_port_is_read_only(admin: AdminServer, method: str) -> None:
    status, headers, _ = get(admin.port, "/status", method=method)
    assert status == 405 and headers["Allow"] == "GET"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "10.1.2.3"])
def test_on_loopback_a_foreign_host_header_is_refused(admin: AdminServer, host: str) -> None:
    # A page on another site that rebinds its name to 127.0.0.1 must not read the job.
    status, _, _ = get(admin.port, "/status", host=host)
    assert status == 403
    assert get(admin.port, "/status", host=f"localhost:{admin.port}")[0] == 200
    assert get(admin.port, "/status", host=f"[::1]:{admin.port}")[0] == 200


def test_a_silent_connection_holds_up_no_one(admin: AdminServer) -> None:
    with socket.create_connection(("127.0.0.1", admin.port), timeout=10) as silent:
        silent.sendall(b"GET /status HTTP/1.1\r\n")  # and never the rest
        assert get(admin.port, "/status")[0] == 200


def test_requests_are_logged_through_structlog_not_as_raw_lines(
    admin: AdminServer, capfd: pytest.CaptureFixture[str]
) -> None:
    get(admin.port, "/status")
    assert "- - [" not in capfd.readouterr().err  # http.server's own line format


def test_a_taken_admin_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"admin port {port} .* already in use"):
            AdminServer(config(tmp_path, health_port=port), _quiet_log())


def test_off_loopback_the_admin_port_needs_tls(tmp_path: Path) -> None:
    flags = {"job_id": 3, "insecure": True, "health_port": 9100, "health_host": "0.0.0.0"}
    with pytest.raises(
        ConfigError, match=re.escape("health_host: 0.0.0.0 is not a loopback address")
    ):
        load_config(ServerConfig, flags, None, environ={})
    # Loopback needs nothing; an unused admin host is not checked.
    load_config(ServerConfig, {**flags, "health_host": "127.0.0.1"}, None, environ={})
    load_config(ServerConfig, {**flags, "health_port": None}, None, environ={})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
