"""The job hears that a session became idle only once the session really is idle.

A coordinator that checks readiness between the job being told and the state changing would
otherwise sleep until its join deadline (seen once in 4 runs with 1,000 clients).
"""

from __future__ import annotations

from pathlib import Path

import structlog

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import PROTOCOL_VERSION, Inbound
from fedsilo.server.app import make_job
from fedsilo.server.config import ServerConfig
from fedsilo.server.state_machine import SessionState


def test_the_job_is_woken_after_the_session_turned_idle(tmp_path: Path) -> None:
    config = ServerConfig(job_id=0, insecure=True, rounds=1, min_clients=1, out=tmp_path / "run")
    job = make_job(config, structlog.get_logger(), checkpoint=None)
    session = job.open_session("test", lambda: None, None)
    seen: list[tuple[SessionState, int]] = []
    job.session_idle = lambda: seen.append((session.state, len(job._idle_ids())))  # type: ignore[method-assign]

    def send(message: pb.ClientMessage) -> None:
        raw = message.SerializeToString()
        session.handle(Inbound(pb.ClientMessage.FromString(raw), len(raw)))

    send(pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, client_name="a")))
    assert seen == []  # joined, not ready yet
    send(pb.ClientMessage(ready=pb.Ready(train_examples=1)))
    assert seen == [(SessionState.IDLE, 1)]  # what the coordinator's check will see
