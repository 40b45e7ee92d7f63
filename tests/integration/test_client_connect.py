"""fl-client against an address where nothing listens: bounded retries, then one clear line."""

from __future__ import annotations

import time

from tests.integration.conftest import Daemons, free_port


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
