"""One member, as hostile as the protocol lets it be, next to an honest fl-client: it cannot
crash, stall, take over or flood the job (issue 11, "Found" items 2-7).

The hostile member is a hand-written client (``raw_session.py``) driving real gRPC against a
real fl-server process; the honest one is a real fl-client.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import torch

from fedsilo.common.proto import federation_pb2 as pb
from tests.integration.conftest import (
    Daemon,
    Daemons,
    assert_strict_json,
    free_port,
    read_metrics,
    wait_for,
)
from tests.integration.raw_session import JOB_ID, RawSession, hello, update_messages
from tests.wire_helpers import decode_state, header_of_state

ROUNDS = 4
SERVER_FLAGS = ("--min-clients", "1", "--seed", "3", "--round-timeout", "60")


def start_server(
    daemons: Daemons, port: int, out: Path, *flags: str, rounds: int = ROUNDS
) -> Daemon:
    return daemons.server(
        JOB_ID,
        port - JOB_ID,
        *SERVER_FLAGS,
        "--rounds",
        str(rounds),
        "--out",
        str(out),
        *flags,
    )


Attack = Callable[[int, dict[str, torch.Tensor]], list[pb.ClientMessage]]


def hostile_member(
    channel: grpc.Channel, name: str, ready: int, attack: Attack
) -> threading.Thread:
    """Join, claim ``ready`` examples, answer every round with ``attack(round, model)``."""
    session = RawSession(channel)

    def run() -> None:
        session.send(hello(name))
        assert session.recv().HasField("init_config")
        session.send(pb.ClientMessage(ready=pb.Ready(train_examples=ready, test_examples=1)))
        while True:
            message = session.recv()
            kind = message.WhichOneof("body")
            if kind in ("finish", "abort"):
                return
            if kind == "evaluate":  # the final model: an honest-looking answer
                evaluation = pb.Evaluation(examples=1, loss=0.5, accuracy=0.5)
                session.send(
                    pb.ClientMessage(
                        eval_result=pb.EvalResult(
                            round=message.evaluate.round, evaluation=evaluation
                        )
                    )
                )
                continue
            if kind != "sync_model":
                continue  # the server's refusals (error), heartbeats
            header = message.sync_model.model
            assert header.HasField("inline")  # the tiny synthetic model
            model = decode_state(header, [header.inline.data], header.inline.checksum)
            session.send(*attack(message.sync_model.round, model))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def every_trick(round_number: int, model: dict[str, torch.Tensor]) -> list[pb.ClientMessage]:
    """Round 1: claim 2^62 examples; 2: 10^6; 3: values of 3e38; 4: a NaN training loss."""
    moved = {k: v + 1000.0 for k, v in model.items()}
    if round_number == 1:
        return update_messages(1, moved, examples=2**62)
    if round_number == 2:
        return update_messages(2, moved, examples=10**6)
    if round_number == 3:
        return update_messages(3, {k: torch.full_like(v, 3e38) for k, v in model.items()})
    messages = update_messages(round_number, moved)
    messages[0].send_model.metrics.train_loss = math.nan
    return messages


def test_a_hostile_member_changes_nothing_the_honest_ones_compute(
    daemons: Daemons, tmp_path: Path
) -> None:
    alone, attacked = tmp_path / "alone", tmp_path / "attacked"
    port = free_port()
    server = start_server(daemons, port, alone)
    honest = daemons.client(port, "honest")
    assert server.wait(timeout=120) == 0, server.tail()
    assert honest.wait(timeout=30) == 0

    port = free_port()
    server = start_server(daemons, port, attacked, "--start-clients", "2")
    honest = daemons.client(port, "honest")  # first, so that it gets id 0 again
    wait_for(lambda: server.has_event("client_ready", client="honest"), 60, "honest to join")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        attacker = hostile_member(channel, "hostile", ready=100, attack=every_trick)
        assert server.wait(timeout=120) == 0, server.tail()
        attacker.join(timeout=30)
    assert honest.wait(timeout=30) == 0

    want = torch.load(alone / "model.pt", weights_only=True)
    got = torch.load(attacked / "model.pt", weights_only=True)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert_strict_json(attacked / "metrics.jsonl")
    reasons = [d["reason"] for row in read_metrics(attacked)[1:] for d in row["dropped"]]
    assert len(reasons) == ROUNDS, reasons
    assert "Ready said 100" in reasons[0] and "Ready said 100" in reasons[1]
    assert "in magnitude" in reasons[2] and "train_loss" in reasons[3]


def test_a_ready_claiming_more_than_the_job_allows_is_refused_and_closed(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    start_server(daemons, port, tmp_path / "run", "--max-examples", "1000")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        greedy = RawSession(channel)
        greedy.send(hello("greedy"))
        assert greedy.recv().HasField("init_config")
        greedy.send(pb.ClientMessage(ready=pb.Ready(train_examples=2**62)))
        assert "at most 1000" in greedy.expect_error(pb.NOT_ADMITTED)
        greedy.expect_closed()


def test_silent_streams_cannot_keep_real_clients_out(daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    # Three members are needed: the job cannot end (and close the silent streams itself) before
    # the handshake deadline has cut them off, however fast the machine.
    server = start_server(
        daemons,
        port,
        tmp_path / "run",
        *("--max-clients", "3", "--min-clients", "3", "--progress-timeout", "3"),
        rounds=2,
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        silent = [RawSession(channel) for _ in range(8)]  # never say Hello
        real = [daemons.client(port, f"org-{n}") for n in range(2)]  # in beside the silent ones
        for n in range(2):
            wait_for(lambda n=n: server.has_event("client_joined", client=f"org-{n}"), 60, "join")
        wait_for(lambda: server.has_event("stream_cut_off"), 60, "the handshake deadline")
        real.append(daemons.client(port, "org-2"))
        assert server.wait(timeout=120) == 0, server.tail()
        for stream in silent:
            stream.expect_cut_off()  # after the handshake deadline (3 s here)
    for client in real:
        assert client.wait(timeout=30) == 0, client.tail()


def test_heartbeats_do_not_hold_an_upload_open(daemons: Daemons, tmp_path: Path) -> None:
    port = free_port()
    server = start_server(
        daemons,
        port,
        tmp_path / "run",
        "--chunk-size",
        "1024",
        "--progress-timeout",
        "3",
        "--transfer-resume-seconds",  # its broken upload is then kept 1 s for a resume
        "1",
        "--start-clients",
        "2",
        rounds=1,
    )
    honest = daemons.client(port, "honest")
    wait_for(lambda: server.has_event("client_ready", client="honest"), 60, "honest to join")
    stop = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        staller = RawSession(channel)
        staller.send(hello("staller"))
        assert staller.recv().HasField("init_config")
        staller.send(pb.ClientMessage(ready=pb.Ready(train_examples=10)))
        sync = staller.recv()
        assert sync.HasField("sync_model")
        while not staller.recv().HasField("trailer"):  # the model's chunks: 1 KiB each
            pass
        # The header of the job's own model, one chunk of it, then nothing but heartbeats.
        staller.send(
            pb.ClientMessage(
                send_model=pb.SendModel(round=1, train_examples=10, update=sync.sync_model.model)
            ),
            pb.ClientMessage(chunk=pb.TensorChunk(data=bytes(1024))),
        )

        def heartbeats() -> None:
            while not stop.wait(0.5):
                staller.send(pb.ClientMessage(heartbeat=pb.Heartbeat()))

        threading.Thread(target=heartbeats, daemon=True).start()
        assert server.wait(timeout=60) == 0, server.tail()  # cut off after 3 s, not 60
        stop.set()
    assert honest.wait(timeout=30) == 0
    cut = [line for line in server.log_lines() if line.get("event") == "client_cut_off"]
    assert [(line["client"], line["phase"]) for line in cut] == [("staller", "upload")]
    (row,) = [r for r in read_metrics(tmp_path / "run") if r["round"] == 1]
    assert row["participants"] == [0]


def test_peer_text_and_floods_cost_the_server_a_bounded_log(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    server = start_server(daemons, port, tmp_path / "run", "--start-clients", "2", rounds=1)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        flood = RawSession(channel)
        flood.send(hello("flood"))
        assert flood.recv().HasField("init_config")
        flood.send(pb.ClientMessage(ready=pb.Ready(train_examples=10)))
        long_name = "x" * 500_000
        header = header_of_state({long_name: torch.zeros(1)})
        flood.send(pb.ClientMessage(send_model=pb.SendModel(round=9, update=header)))
        reply = flood.recv()
        assert reply.WhichOneof("body") == "error", reply
        assert len(reply.error.message) < 1000, len(reply.error.message)
        size_before = server.stderr.stat().st_size
        flood.send(*[pb.ClientMessage(ready=pb.Ready(train_examples=1))] * 2000)  # illegal now
        answers = flood.drain(limit=500)
    assert len(answers) <= 101, len(answers)  # one error each, then the stream is closed
    grown = server.stderr.stat().st_size - size_before
    assert grown < 20_000, grown
    assert server.has_event("session_closed_for_errors")
