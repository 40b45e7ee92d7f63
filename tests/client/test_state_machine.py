"""The client's transition table: every legal path, and one Error for anything else."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fedsilo.client.state_machine import TRANSITIONS, ClientState, ServerEvent
from fedsilo.common.errors import (
    JobAbortedError,
    ProtocolError,
    ServerRefusedError,
    SessionLostError,
)
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import header_of, specs_of
from tests.client.helpers import TRAIN, Driven, init_message

CHUNK = 1024  # the synthetic model's 2,440 bytes then stream in three chunks, never inline


def model_header(driven: Driven) -> pb.TensorStreamHeader:
    return header_of(specs_of(driven.own_state()))


def message_of(event: ServerEvent, driven: Driven) -> pb.ServerMessage:
    """A plausible server message of each kind."""
    if event is ServerEvent.INIT_CONFIG:
        return init_message(CHUNK)
    if event is ServerEvent.SYNC_MODEL:
        model = model_header(driven) if driven.protocol.model is not None else None
        return pb.ServerMessage(sync_model=pb.SyncModel(round=1, train=TRAIN, model=model))
    if event is ServerEvent.EVALUATE:
        model = model_header(driven) if driven.protocol.model is not None else None
        return pb.ServerMessage(evaluate=pb.Evaluate(round=1, model=model))
    bodies: dict[ServerEvent, Callable[[], pb.ServerMessage]] = {
        ServerEvent.CHUNK: lambda: pb.ServerMessage(chunk=pb.TensorChunk(data=b"\x00" * 8)),
        ServerEvent.TRAILER: lambda: pb.ServerMessage(trailer=pb.TensorStreamTrailer()),
        ServerEvent.FINISH: lambda: pb.ServerMessage(finish=pb.Finish(rounds_completed=1)),
        ServerEvent.ABORT: lambda: pb.ServerMessage(abort=pb.Abort(reason="x")),
        ServerEvent.HEARTBEAT: lambda: pb.ServerMessage(heartbeat=pb.Heartbeat()),
        ServerEvent.ERROR: lambda: pb.ServerMessage(error=pb.Error(code=pb.INTERNAL)),
        ServerEvent.SECAGG_ROSTER: lambda: pb.ServerMessage(secagg_roster=pb.SecAggKeyRoster()),
        ServerEvent.SECAGG_ROUTED: lambda: pb.ServerMessage(secagg_routed=pb.SecAggRoutedShares()),
        ServerEvent.SECAGG_UNMASK_REQUEST: lambda: pb.ServerMessage(
            secagg_unmask_request=pb.SecAggUnmaskRequest()
        ),
        ServerEvent.UPLOAD_ACK: lambda: pb.ServerMessage(
            upload_ack=pb.StreamPosition(round=1, offset=8)
        ),
    }
    return bodies[event]()


def driven_to(state: ClientState) -> Driven:
    """A client protocol brought to ``state`` by legal messages."""
    driven = Driven()
    if state is ClientState.HELLO_SENT:
        return driven
    driven.protocol.handle(init_message(CHUNK))
    if state is ClientState.RECEIVING_ROUND:
        driven.protocol.handle(message_of(ServerEvent.SYNC_MODEL, driven))
    elif state is ClientState.RECEIVING_FINAL:
        driven.protocol.handle(message_of(ServerEvent.EVALUATE, driven))
    elif state is ClientState.FINISHED:
        driven.protocol.handle(message_of(ServerEvent.FINISH, driven))
    assert driven.protocol.state is state
    driven.take()
    return driven


ILLEGAL = [
    (state, event)
    for state in ClientState
    for event in ServerEvent
    if (state, event) not in TRANSITIONS
]


@pytest.mark.parametrize(
    ("state", "event"), ILLEGAL, ids=[f"{s.value}-{e.value}" for s, e in ILLEGAL]
)
def test_an_unexpected_message_gets_one_error_and_one_line(
    state: ClientState, event: ServerEvent
) -> None:
    driven = driven_to(state)
    with pytest.raises(ProtocolError) as raised:
        driven.protocol.handle(message_of(event, driven))
    assert str(raised.value) == (
        f"the server broke the protocol: {event.value} is not allowed while {state.value}"
    )
    (error,) = driven.take()
    assert error.error.code == pb.ILLEGAL_MESSAGE
    assert error.error.message == str(raised.value)


def test_the_table_forbids_what_the_protocol_never_does() -> None:
    # 5 states x 13 messages = 65 pairs; legal: 8 steps, 3 secure-aggregation stages and
    # upload_ack (while ready), 5 heartbeats, 4 aborts, 4 errors = 25
    assert len(ILLEGAL) == 65 - 25
    assert (ClientState.RECEIVING_ROUND, ServerEvent.UPLOAD_ACK) in ILLEGAL
    assert (ClientState.READY, ServerEvent.INIT_CONFIG) in ILLEGAL
    assert (ClientState.RECEIVING_ROUND, ServerEvent.SYNC_MODEL) in ILLEGAL
    assert (ClientState.FINISHED, ServerEvent.FINISH) in ILLEGAL


def test_a_whole_session_walks_the_table() -> None:
    driven = driven_to(ClientState.READY)
    protocol = driven.protocol
    header, chunks, checksum = driven.model_stream(driven.own_state(), CHUNK)
    assert len(chunks) == 3
    protocol.handle(pb.ServerMessage(sync_model=pb.SyncModel(round=1, train=TRAIN, model=header)))
    assert protocol.state is ClientState.RECEIVING_ROUND
    for chunk in chunks:
        protocol.handle(pb.ServerMessage(chunk=pb.TensorChunk(data=chunk)))
    protocol.handle(pb.ServerMessage(heartbeat=pb.Heartbeat()))  # legal anywhere
    protocol.handle(pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)))
    assert protocol.state is ClientState.READY
    assert driven.take()[0].HasField("send_model")
    header, chunks, checksum = driven.model_stream(driven.own_state(), CHUNK)
    protocol.handle(pb.ServerMessage(evaluate=pb.Evaluate(round=1, model=header)))
    assert protocol.state is ClientState.RECEIVING_FINAL
    for chunk in chunks:
        protocol.handle(pb.ServerMessage(chunk=pb.TensorChunk(data=chunk)))
    protocol.handle(pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)))
    assert [m.WhichOneof("body") for m in driven.take()] == ["eval_result"]
    assert protocol.handle(pb.ServerMessage(finish=pb.Finish(rounds_completed=1))) is True
    assert protocol.state is ClientState.FINISHED


@pytest.mark.parametrize("state", [s for s in ClientState if s is not ClientState.FINISHED])
def test_abort_and_error_end_the_session_in_every_state(state: ClientState) -> None:
    with pytest.raises(JobAbortedError, match="aborted the job: no quorum"):
        driven_to(state).protocol.handle(pb.ServerMessage(abort=pb.Abort(reason="no quorum")))
    with pytest.raises(SessionLostError, match="stopped: restart"):
        driven_to(state).protocol.handle(
            pb.ServerMessage(abort=pb.Abort(reason="restart", retry=True))
        )
    hostile = pb.Error(code=pb.WRONG_JOB, message="line one\nline two\x1b[31m")
    with pytest.raises(ServerRefusedError) as raised:
        driven_to(state).protocol.handle(pb.ServerMessage(error=hostile))
    assert str(raised.value) == "the server refused: WRONG_JOB: line one line two [31m"
