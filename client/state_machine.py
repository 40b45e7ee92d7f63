"""What a server may send when: the one transition table of the client's side of a session.

Every server message is looked up in ``TRANSITIONS`` as (state, message) -> (action, next
state). A pair that is not in the table is illegal: the client answers it with one
``Error(ILLEGAL_MESSAGE)`` and stops with one line saying what came when. A model that arrives
inline (in its SyncModel or Evaluate) goes through the same table as a CHUNK and a TRAILER.

Session lifecycle, one per stream::

    HELLO_SENT --init_config--> READY --sync_model--> RECEIVING_ROUND --trailer--> READY
        RECEIVING_ROUND --chunk--> RECEIVING_ROUND
        READY --evaluate--> RECEIVING_FINAL --chunk/trailer--> ... READY
        READY --finish--> FINISHED
        READY --secagg_roster, secagg_routed, secagg_unmask_request--> READY
        READY --upload_ack--> READY
        any but FINISHED --abort/error--> FINISHED (the session ends)

Heartbeats are legal in every state; after FINISHED only heartbeats are.
"""

from __future__ import annotations

from enum import Enum


class ClientState(Enum):
    """Where the client is in one session with the server."""

    HELLO_SENT = "hello_sent"  # waiting for InitConfig
    READY = "ready"  # joined: waiting for a round, the final evaluation or the end
    RECEIVING_ROUND = "receiving_round"  # a SyncModel's model stream
    RECEIVING_FINAL = "receiving_final"  # an Evaluate's model stream
    FINISHED = "finished"


class ServerEvent(Enum):
    """A server message, named as the ServerMessage oneof field."""

    INIT_CONFIG = "init_config"
    SYNC_MODEL = "sync_model"
    EVALUATE = "evaluate"
    CHUNK = "chunk"
    TRAILER = "trailer"
    FINISH = "finish"
    ABORT = "abort"
    HEARTBEAT = "heartbeat"
    ERROR = "error"
    SECAGG_ROSTER = "secagg_roster"
    SECAGG_ROUTED = "secagg_routed"
    SECAGG_UNMASK_REQUEST = "secagg_unmask_request"
    UPLOAD_ACK = "upload_ack"


class ClientAction(Enum):
    """What the client does for a legal message; ``client/protocol.py`` implements each one."""

    JOIN = "join"
    BEGIN_ROUND = "begin_round"
    BEGIN_FINAL = "begin_final"
    RECEIVE_CHUNK = "receive_chunk"
    TRAIN_AND_UPLOAD = "train_and_upload"
    EVALUATE_FINAL = "evaluate_final"
    END = "end"
    STOP = "stop"
    SERVER_ERROR = "server_error"
    NOTE_ACK = "note_ack"
    NOTHING = "nothing"
    SECAGG_SHARE = "secagg_share"
    SECAGG_UPLOAD = "secagg_upload"
    SECAGG_UNMASK = "secagg_unmask"


S = ClientState
E = ServerEvent
A = ClientAction

TRANSITIONS: dict[tuple[ClientState, ServerEvent], tuple[ClientAction, ClientState]] = {
    (S.HELLO_SENT, E.INIT_CONFIG): (A.JOIN, S.READY),
    (S.READY, E.SYNC_MODEL): (A.BEGIN_ROUND, S.RECEIVING_ROUND),
    (S.RECEIVING_ROUND, E.CHUNK): (A.RECEIVE_CHUNK, S.RECEIVING_ROUND),
    (S.RECEIVING_ROUND, E.TRAILER): (A.TRAIN_AND_UPLOAD, S.READY),
    (S.READY, E.EVALUATE): (A.BEGIN_FINAL, S.RECEIVING_FINAL),
    (S.RECEIVING_FINAL, E.CHUNK): (A.RECEIVE_CHUNK, S.RECEIVING_FINAL),
    (S.RECEIVING_FINAL, E.TRAILER): (A.EVALUATE_FINAL, S.READY),
    (S.READY, E.FINISH): (A.END, S.FINISHED),
    # Secure aggregation, after the round's model (and training): the protocol object checks
    # the stages' order itself, and refuses a message out of it.
    (S.READY, E.SECAGG_ROSTER): (A.SECAGG_SHARE, S.READY),
    (S.READY, E.SECAGG_ROUTED): (A.SECAGG_UPLOAD, S.READY),
    (S.READY, E.SECAGG_UNMASK_REQUEST): (A.SECAGG_UNMASK, S.READY),
    # The server acknowledges the bytes of the update the client is sending (or resuming).
    (S.READY, E.UPLOAD_ACK): (A.NOTE_ACK, S.READY),
}
for _state in S:
    TRANSITIONS[(_state, E.HEARTBEAT)] = (A.NOTHING, _state)
    if _state is not S.FINISHED:
        TRANSITIONS[(_state, E.ABORT)] = (A.STOP, S.FINISHED)
        TRANSITIONS[(_state, E.ERROR)] = (A.SERVER_ERROR, S.FINISHED)


def transition(state: ClientState, event: ServerEvent) -> tuple[ClientAction, ClientState] | None:
    """Return (action, next state) for a legal message, or None if it is illegal in ``state``."""
    return TRANSITIONS.get((state, event))
