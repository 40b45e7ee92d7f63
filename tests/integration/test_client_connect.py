"""fl-client against an address where nothing listens (or no longer does): bounded retries, then
one clear line."""

from __future__ import annotations

import signal
import time

from tests.integration.conftest import Daemons, free_port, wait_for


def test_client_gives_up_on_a_closed_port_with_one_clear_line(daemons: Daemons) -> None:
    port = free_port()  # nothing listens here
    started = time.monotonic()
    client = daemons.start(
        "fl-client",
        "--server",
        f"127.0.0.1:{port}",
        "--name",
        "lonely",
        "--connect-timeout",
        "2",
        name="client",
    )
    assert client.wait(timeout=60) == 1
    elapsed = time.monotonic() - started
    message = client.stderr.read_text().strip().splitlines()[-1]
    assert message.startswith("fl-client: error: ")
    assert f"127.0.0.1:{port}" in message and "within 2s" in message
    assert "Traceback" not in message
    assert elapsed >= 2.0  # it did retry for the whole connect timeout


def test_client_with_a_bad_server_address_exits_2(daemons: Daemons) -> None:
    client = daemons.start("fl-client", "--server", "no-port-here", name="client")
    assert client.wait(timeout=60) == 2
    assert "server" in client.stderr.read_text()


def test_client_whose_server_went_away_gives_up_after_one_connect_timeout(
    daemons: Daemons,
) -> None:
    port = free_port()
    server = daemons.server(1, port - 1, "--task", "synthetic", "--min-clients", "2")
    client = daemons.client(port, "left-alone", "--connect-timeout", "3")
    wait_for(lambda: server.has_event("client_ready", client="left-alone"), 60, "the client")
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    lost = time.monotonic()
    # One outage of 3 s, not a fresh budget at every failed attempt (it used to retry forever).
    assert client.wait(timeout=30) == 1, client.tail()
    assert time.monotonic() - lost < 20
    message = client.stderr.read_text().strip().splitlines()[-1]
    assert message.startswith("fl-client: error: ") and "within 3s" in message, message
