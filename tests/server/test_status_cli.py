"""fl-status: the table it prints, its address rule and its exit codes (against a live port)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from fedsilo.common.errors import ConfigError
from fedsilo.server.admin import AdminServer
from fedsilo.server.status import StatusView
from fedsilo.server.status_cli import format_status, main, parse_address
from tests.server.status_helpers import config, federation


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AdminServer, StatusView]]:
    tmp_path = tmp_path_factory.mktemp("cli")
    fed = federation(tmp_path)
    settings = config(tmp_path, health_port=free_port())
    view = StatusView(settings, fed.state, fed.telemetry)
    server = AdminServer(settings, structlog.wrap_logger(structlog.ReturnLogger()))  # silent
    server.start(view)
    try:
        yield server, view
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:8081", ("127.0.0.1", 8081)), ("[::1]:9", ("::1", 9)), ("host:1", ("host", 1))],
)
def test_an_address_is_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["8081", "host:", ":8081", "host:port", "host:0", "h:65536"])
def test_anything_else_is_a_usage_error(value: str) -> None:
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_address(value)


def test_the_table_names_the_job_the_round_and_every_client(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    text = format_status(StatusView(config(tmp_path), fed.state, fed.telemetry).status())
    lines = text.splitlines()
    assert lines[0].startswith("job 3 (synthetic, fedavg): round, round 2 of 5, 1 completed, up ")
    assert lines[1].startswith("round 2: 1 of 5 updates in, 1 dropped, ")
    assert lines[2] == "clients: 5 connected, 1 ready"
    rows = {line.split()[0]: line for line in lines if line.startswith("org-")}
    assert "downloading 25%" in rows["org-down"]
    assert "uploading 25%" in rows["org-up"]
    assert "dropped in round 2: disconnected (while training)" in rows["org-gone"]
    assert "not connected" in rows["org-old"]
    history = lines[lines.index("ROUND  TRAIN LOSS  EVAL LOSS  EVAL ACC  SECONDS") + 1 :]
    assert history[0].split() == ["0", "-", "0.6900", "50.0%", "-"]
    assert history[1].split() == ["1", "0.5000", "-", "-", "2.00"]


def test_it_prints_the_table_or_the_json_of_a_live_port(live, capsys) -> None:
    server, view = live
    assert main([f"127.0.0.1:{server.port}"]) == 0
    assert capsys.readouterr().out.startswith("job 3 (synthetic, fedavg): round, round 2 of 5")
    assert main([f"127.0.0.1:{server.port}", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["job"] == {
        **view.status()["job"],
        "uptime_seconds": document["job"]["uptime_seconds"],
    }


def test_a_port_nobody_listens_on_is_one_line_and_exit_1(capsys) -> None:
    port = free_port()
    assert main([f"127.0.0.1:{port}"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"fl-status: error: cannot reach 127.0.0.1:{port}: Connection refused\n"


def test_a_port_that_is_not_an_admin_port_is_exit_1(capsys) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        # Accepted by the kernel, never answered: the request times out.
        assert main([f"127.0.0.1:{port}", "--timeout", "0.5"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    "argv", [["nonsense"], ["127.0.0.1:1", "--watch", "0"], ["127.0.0.1:1", "--timeout", "-1"]]
)
def test_usage_errors_exit_2(argv: list[str], capsys) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("fl-status: error: ")


def test_a_missing_bundle_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert main(["127.0.0.1:1", "--bundle", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
