"""Secure aggregation between real daemons: signed keys over mutual TLS, and a member that dies
at each stage of the protocol, with the round completing from the survivors."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import Daemons, free_port, read_metrics, wait_for
from tests.integration.tls import JOB, bundle_client, provision, tls_server

SECAGG = ("--secure-aggregation", "--secagg-clip-norm", "50", "--weighting", "uniform")
ORGS = ("org-a", "org-b", "org-c", "org-d")
# (stage, the event of the dying client's log it is killed at)
# Every stage is killed in-process in tests/common/secagg/test_protocol.py; through the daemons
# the two early stages run in `make test-slow`.
SLOW = pytest.mark.slow
DEATHS = [
    pytest.param(
        "after_advertising_keys", "secagg_advertised", id="after_advertising_keys", marks=SLOW
    ),
    pytest.param("after_sharing_keys", "secagg_shares_sent", id="after_sharing_keys", marks=SLOW),
    pytest.param("with_its_upload_in_flight", "update_sent", id="with_its_upload_in_flight"),
    pytest.param("when_asked_to_unmask", "secagg_unmask_requested", id="when_asked_to_unmask"),
]


def test_a_federation_over_mutual_tls_sums_masked_updates_with_signed_keys(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    certs = tmp_path / "certs"
    provision(certs, port, "org-a,org-b,org-c")
    out = tmp_path / "run"
    server = tls_server(
        daemons, certs, port, "--rounds", "2", "--min-clients", "3", "--out", str(out), *SECAGG
    )
    clients = [bundle_client(daemons, certs / org, port) for org in ("org-a", "org-b", "org-c")]
    assert server.wait(timeout=120) == 0, server.tail()
    for client in clients:
        assert client.wait(timeout=30) == 0, client.tail()
    assert [row.get("participants") for row in read_metrics(out)[1:]] == [[0, 1, 2], [0, 1, 2]]
    unmasked = [line for line in server.log_lines() if line.get("event") == "secagg_unmasked"]
    assert [line["survivors"] for line in unmasked] == [[0, 1, 2], [0, 1, 2]]
    assert not any(line.get("event") == "secagg_keys_unsigned" for line in server.log_lines())
    audit = [
        json.loads(x)
        for x in (tmp_path / "runs" / "client-org-a" / "audit.jsonl").read_text().splitlines()
    ]
    assert any(r.get("event") == "update_sent" and r.get("codec") == "secagg" for r in audit)


@pytest.mark.parametrize(("stage", "event"), DEATHS)
def test_a_member_dying_at_any_stage_leaves_the_round_to_the_survivors(
    daemons: Daemons, tmp_path: Path, stage: str, event: str
) -> None:
    port = free_port()
    out = tmp_path / "run"
    server = daemons.server(
        JOB,
        port - JOB,
        "--rounds",
        "1",
        "--min-clients",
        "3",
        "--start-clients",
        "4",
        "--progress-timeout",
        "5",
        "--out",
        str(out),
        *SECAGG,
    )
    marker = tmp_path / "killed.json"
    kill = (sys.executable, "-m", "tests.integration.kill_at", str(marker), event, "--")
    members = []
    for org in ORGS:
        prefix = kill if org == "org-d" else ()
        members.append(daemons.client(port, org, "--log-level", "debug", prefix=prefix))
        wait_for(lambda org=org: server.has_event("client_joined", client=org), 60, org)
    dying = members[-1]
    assert dying.wait(timeout=120) == -signal.SIGKILL, dying.tail()
    assert server.wait(timeout=120) == 0, server.tail()
    for member in members[:-1]:
        assert member.wait(timeout=30) == 0, member.tail()
    (row,) = [r for r in read_metrics(out) if r["round"] == 1]
    unmasked = [line for line in server.log_lines() if line.get("event") == "secagg_unmasked"]
    survivors = unmasked[0]["survivors"]
    # Killed once its upload is handed to gRPC, it may or may not have reached the server whole.
    landed = server.has_event("update_received", client="org-d")
    if stage == "when_asked_to_unmask" or (stage == "with_its_upload_in_flight" and landed):
        assert survivors == [0, 1, 2, 3]  # its masked update is in the sum: its shares are rebuilt
    else:
        assert survivors == [0, 1, 2]
        assert [d["client_id"] for d in row["dropped"]] == [3]
    model = torch.load(out / "model.pt", weights_only=True)
    assert all(bool(torch.isfinite(t).all()) for t in model.values())
