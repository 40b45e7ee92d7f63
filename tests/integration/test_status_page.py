"""The status page in a real headless chromium, against a real fl-server and fl-clients:
it loads, lists the connected clients and changes as rounds complete. It also makes the
screenshot README shows (docs/images/status.png)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO, Daemons, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "docs" / "images" / "status.png"
JOB = 5
# More rounds than the page needs to follow, so that the job cannot end between two of its polls
# before it has shown round 2 (the job is stopped with SIGTERM once the page has been checked).
ROUNDS = 40
WAIT_MS = 90_000  # every wait below is bounded by this, and ends as soon as the page changes


def can_install_packages() -> bool:
    """Whether `make browser` could apt-get install chromium here (root or passwordless sudo)."""
    if shutil.which("apt-get") is None:
        return False
    if os.geteuid() == 0:
        return True
    sudo = shutil.which("sudo")
    probe = [sudo, "-n", "true"] if sudo else None
    return (
        probe is not None
        and subprocess.run(probe, capture_output=True, check=False).returncode == 0
    )


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright; skipped only where it cannot be installed."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is missing: run `make install`"
    )
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (`make browser` installs Debian's chromium)"
        if can_install_packages():
            pytest.fail(f"{reason}; this machine could install it: run `make install`")
        pytest.skip(f"{reason}; it cannot be installed here (no apt-get, or not root)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def test_the_status_page_shows_the_clients_and_follows_the_rounds(
    daemons: Daemons, browser: Any, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    server = daemons.server(
        JOB,
        port - JOB,
        *("--task", "tests.integration.user_task:TinyTask", "--rounds", str(ROUNDS)),
        *("--min-clients", "2", "--local-epochs", "150", "--batch-size", "16"),
        *("--health-port", str(admin), "--out", str(tmp_path / "run")),
    )
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(f"http://127.0.0.1:{admin}/", timeout=WAIT_MS)
    # Selectors, not script: the page's Content-Security-Policy forbids eval, also Playwright's.
    page.wait_for_selector('body[data-phase="waiting"]', timeout=WAIT_MS)
    assert page.text_content("#job-title") == (
        f"fedsilo job {JOB} · tests.integration.user_task:TinyTask"
    )
    assert page.locator("#clients tbody tr").count() == 0

    for name in ("hospital-a", "lab-b"):
        daemons.client(port, name)
    for name in ("hospital-a", "lab-b"):
        page.wait_for_selector(f'#clients tbody tr[data-client="{name}"]', timeout=WAIT_MS)
    states = page.eval_on_selector_all(
        "#clients tbody tr", "rows => rows.map(r => [r.dataset.client, r.dataset.state])"
    )
    assert sorted(name for name, _ in states) == ["hospital-a", "lab-b"]
    assert page.text_content("#clients-connected", timeout=WAIT_MS).startswith("2 ")

    before = int(page.get_attribute("body", "data-rounds-completed"))
    assert before < ROUNDS, "the job ended before the page could follow it"
    page.wait_for_selector(f'body:not([data-rounds-completed="{before}"])', timeout=WAIT_MS)
    assert int(page.get_attribute("body", "data-rounds-completed")) > before
    page.wait_for_selector('#history tbody tr[data-round="2"]', timeout=WAIT_MS)
    # Two rounds in: the loss curve has points, the accuracy curve the evaluated models.
    assert page.locator("#loss-chart path.series.train_loss").count() == 1
    assert int(page.get_attribute("#loss-chart path.train_loss", "data-points")) >= 2
    assert page.locator("#accuracy-chart path.series.eval_accuracy").count() == 1
    assert page.locator("#history tbody tr").count() >= 3
    shown = page.text_content("#rounds-completed")
    assert shown == page.get_attribute("body", "data-rounds-completed")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    assert errors == [], errors  # no script error while the job ran

    server.process.send_signal(signal.SIGTERM)
    assert server.wait(timeout=90) == 0, server.tail()
    # Once the job is over the page says so instead of showing a stale state as live.
    page.wait_for_selector("#connection.lost", timeout=WAIT_MS)
