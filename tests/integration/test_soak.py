"""Soak (make test-slow): 50 rounds x 6 clients while clients are killed (SIGKILL) and
restarted at random. The job must complete every round; the figures go to docs/reliability.md.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, Daemons, free_port, read_metrics

ROUNDS = 50
CLIENTS = 6
SEED = 2026
SOAK_DEADLINE = 900.0
POLL = 0.05


@pytest.mark.slow
def test_soak_fifty_rounds_with_random_client_kills(daemons: Daemons, tmp_path: Path) -> None:
    chaos = random.Random(SEED)
    port = free_port()
    run_dir = tmp_path / "run"
    started = time.monotonic()
    server = daemons.server(
        1,
        port - 1,
        "--rounds",
        str(ROUNDS),
        "--min-clients",
        "2",
        "--round-timeout",
        "60",
        "--progress-timeout",
        "5",
        "--local-epochs",
        "20",
        "--out",
        str(run_dir),
    )
    names = [f"org-{i}" for i in range(CLIENTS)]
    live: dict[str, Daemon] = {
        name: daemons.client(port, name, "--connect-timeout", "300") for name in names
    }
    down: dict[str, int] = {}  # name -> round at which to restart it
    kills = restarts = 0
    seen_round = 0
    deadline = started + SOAK_DEADLINE
    while server.process.poll() is None and time.monotonic() < deadline:
        lines = server.log_lines()
        selected = {
            line["round"]: line["clients"] for line in lines if line.get("event") == "round_started"
        }
        ids = {
            line["client"]: line["client_id"]
            for line in lines
            if line.get("event") == "client_joined"
        }
        current = max(selected, default=0)
        if current > seen_round:
            seen_round = current
            for name, when in list(down.items()):
                if current >= when:
                    live[name] = daemons.client(port, name, "--connect-timeout", "300")
                    del down[name]
                    restarts += 1
            # Kill one client of this round only when it has 4+ clients and at most one other
            # is down: every round keeps the 2 updates it needs (min_clients=2).
            in_round = sorted(n for n in live if n not in down and ids.get(n) in selected[current])
            if len(in_round) >= 4 and len(down) < 2 and chaos.random() < 0.5:
                victim = chaos.choice(in_round)
                if chaos.random() < 0.5:  # sometimes mid-training, sometimes right away
                    time.sleep(chaos.uniform(0.0, 0.3))  # chaos timing, not a wait on a condition
                live[victim].process.send_signal(signal.SIGKILL)
                live[victim].process.wait(timeout=10)
                kills += 1
                down[victim] = current + chaos.randint(1, 3)
        time.sleep(POLL)
    assert server.wait(timeout=120) == 0, server.tail()
    seconds = time.monotonic() - started

    rows = read_metrics(run_dir)
    completed = [row for row in rows if row["round"] >= 1]
    dropouts = sum(len(row["dropped"]) for row in completed)
    joins = sum(1 for line in server.log_lines() if line.get("event") == "client_joined")
    figures = {
        "rounds_completed": len(completed),
        "clients": CLIENTS,
        "kills": kills,
        "restarts": restarts,
        "dropouts": dropouts,
        "rejoins": joins - CLIENTS,
        "mean_participants": round(
            sum(len(row["participants"]) for row in completed) / len(completed), 2
        ),
        "seconds": round(seconds, 1),
        "final_accuracy": rows[-1].get("eval_accuracy"),
    }
    print("SOAK", json.dumps(figures))
    (Path(__file__).resolve().parents[2] / "build").mkdir(exist_ok=True)
    (Path(__file__).resolve().parents[2] / "build" / "soak.json").write_text(json.dumps(figures))
    assert figures["rounds_completed"] == ROUNDS
    assert kills > 0 and dropouts > 0
