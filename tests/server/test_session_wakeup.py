"""The job hears that a client is ready only once the client counts as available.

A coordinator that checks readiness between being woken and the change it was woken for
would otherwise sleep until its join deadline (seen once in 4 runs with 1,000 clients). The
registry now changes availability and wakes the coordinator in one critical section; this test
records what a woken coordinator sees.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import PROTOCOL_VERSION, Inbound
from fedsilo.server.app import make_job
from fedsilo.server.config import ServerConfig


def test_the_job_is_woken_after_the_client_became_available(tmp_path: Path) -> None:
    config = ServerConfig(job_id=0, insecure=True, rounds=1, min_clients=1, out=tmp_path / "run")
    job = make_job(config, structlog.get_logger(), checkpoint=None)
    session = job.open_session("test", lambda: None, None)
    seen: list[int] = []
    cond = job.state.cond
    notify_all = cond.notify_all

    def recording_notify() -> None:
        seen.append(len(job.state.registry.available()))  # what the woken coordinator sees
        notify_all()

    cond.notify_all = recording_notify  # type: ignore[method-assign]

    def send(message: pb.ClientMessage) -> None:
        raw = message.SerializeToString()
        session.handle(Inbound(pb.ClientMessage.FromString(raw), len(raw)))

    send(pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, client_name="a")))
    assert seen == []  # joined, not ready yet
    send(pb.ClientMessage(ready=pb.Ready(train_examples=1)))
    assert seen == [1]
