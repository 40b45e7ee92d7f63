"""What is legal when: the one transition table of a client session, and the job's phases.

Every event on a session, whether a message from the client or a step the job takes, is
looked up in ``TRANSITIONS`` as (state, event) -> (action, next state). A pair that is not in
the table is illegal; ``illegal_code`` says which wire ErrorCode the client gets for it, and
the session's state does not change. ``RESUME`` as next state means "the state the session was
in when it began discarding a refused tensor stream".

Session lifecycle::

    CONNECTED --hello--> JOINED --ready--> IDLE --sync--> TRAINING --send_model--> UPLOADING
        UPLOADING --chunk--> UPLOADING --trailer--> IDLE
        (secure aggregation) TRAINING --secagg_advert, secagg_shares--> TRAINING
        IDLE --secagg_unmask--> IDLE
        IDLE --evaluate--> EVALUATING --eval_result--> IDLE
        any --disconnect--> CLOSED

A refused SendModel (wrong round, bad header, round already closed) or a broken upload moves the
session to DISCARDING, which swallows the rest of that tensor stream up to its trailer.

The job's phases advance along ``JOB_PHASES``: WAITING -> ROUND -> ... -> EVALUATING -> FINISHED,
with ABORTED reachable from any phase before the end. A job resumed from a checkpoint starts in
RESTORED, from which it waits for clients for its next round, or, when every round was already
done, goes straight to EVALUATING (which waits for its clients itself). A move that is not in
the table is a bug, never a traceback: it aborts the job with a line saying which move it was.
"""

from __future__ import annotations

from enum import Enum

from fedsilo.common.errors import JobAbortedError
from fedsilo.common.proto import federation_pb2 as pb


class SessionState(Enum):
    """Where one client's session is in the protocol."""

    CONNECTED = "connected"
    JOINED = "joined"
    IDLE = "idle"
    TRAINING = "training"
    UPLOADING = "uploading"
    DISCARDING = "discarding"
    EVALUATING = "evaluating"
    CLOSED = "closed"


class Event(Enum):
    """Something that happens to a session: a client message or a job step."""

    # from the client (names match the ClientMessage oneof fields)
    HELLO = "hello"
    READY = "ready"
    SEND_MODEL = "send_model"
    CHUNK = "chunk"
    TRAILER = "trailer"
    EVAL_RESULT = "eval_result"
    HEARTBEAT = "heartbeat"
    ERROR = "error"
    SECAGG_ADVERT = "secagg_advert"
    SECAGG_SHARES = "secagg_shares"
    SECAGG_UNMASK = "secagg_unmask"
    # from the job
    SYNC = "sync"
    EVALUATE = "evaluate"
    REFUSE_STREAM = "refuse_stream"
    DISCONNECT = "disconnect"


class Action(Enum):
    """What the session does for a legal event; the session module implements each one."""

    ADMIT = "admit"
    MARK_READY = "mark_ready"
    SEND_SYNC = "send_sync"
    BEGIN_UPLOAD = "begin_upload"
    RECEIVE_CHUNK = "receive_chunk"
    FINISH_UPLOAD = "finish_upload"
    SEND_EVALUATE = "send_evaluate"
    RECORD_EVALUATION = "record_evaluation"
    START_DISCARD = "start_discard"
    DISCARD_CHUNK = "discard_chunk"
    END_DISCARD = "end_discard"
    LOG_PEER_ERROR = "log_peer_error"
    RECORD_SECAGG = "record_secagg"
    NOTHING = "nothing"
    DROP = "drop"


S = SessionState
E = Event
A = Action

# Marker for "back to the state saved when discarding began".
RESUME: SessionState | None = None

TRANSITIONS: dict[tuple[SessionState, Event], tuple[Action, SessionState | None]] = {
    (S.CONNECTED, E.HELLO): (A.ADMIT, S.JOINED),
    (S.JOINED, E.READY): (A.MARK_READY, S.IDLE),
    (S.IDLE, E.SYNC): (A.SEND_SYNC, S.TRAINING),
    (S.TRAINING, E.SEND_MODEL): (A.BEGIN_UPLOAD, S.UPLOADING),
    # A duplicate or late update arrives while idle: BEGIN_UPLOAD ignores it (and logs it).
    (S.IDLE, E.SEND_MODEL): (A.BEGIN_UPLOAD, S.UPLOADING),
    (S.UPLOADING, E.CHUNK): (A.RECEIVE_CHUNK, S.UPLOADING),
    (S.UPLOADING, E.TRAILER): (A.FINISH_UPLOAD, S.IDLE),
    (S.IDLE, E.EVALUATE): (A.SEND_EVALUATE, S.EVALUATING),
    (S.EVALUATING, E.EVAL_RESULT): (A.RECORD_EVALUATION, S.IDLE),
    (S.DISCARDING, E.CHUNK): (A.DISCARD_CHUNK, S.DISCARDING),
    (S.DISCARDING, E.TRAILER): (A.END_DISCARD, RESUME),
    # Secure aggregation: keys and shares while the round's work goes on, shares after upload.
    (S.TRAINING, E.SECAGG_ADVERT): (A.RECORD_SECAGG, S.TRAINING),
    (S.TRAINING, E.SECAGG_SHARES): (A.RECORD_SECAGG, S.TRAINING),
    (S.IDLE, E.SECAGG_UNMASK): (A.RECORD_SECAGG, S.IDLE),
}
# A refused tensor stream can start (SendModel) or break (chunk, trailer) in these states.
for _state in (S.JOINED, S.IDLE, S.TRAINING, S.UPLOADING, S.EVALUATING):
    TRANSITIONS[(_state, E.REFUSE_STREAM)] = (A.START_DISCARD, S.DISCARDING)
# Heartbeats, peer errors and disconnects are legal everywhere.
for _state in S:
    if _state is not S.CLOSED:
        TRANSITIONS[(_state, E.HEARTBEAT)] = (A.NOTHING, _state)
        TRANSITIONS[(_state, E.ERROR)] = (A.LOG_PEER_ERROR, _state)
        TRANSITIONS[(_state, E.DISCONNECT)] = (A.DROP, S.CLOSED)


def transition(state: SessionState, event: Event) -> tuple[Action, SessionState | None] | None:
    """Return (action, next state) for a legal event, or None if it is illegal in ``state``."""
    return TRANSITIONS.get((state, event))


def illegal_code(state: SessionState, event: Event) -> int:
    """Return the wire ErrorCode for an event that is illegal in ``state``."""
    if state is S.CONNECTED:
        return int(pb.UNKNOWN_CLIENT)
    if event is E.HELLO:
        return int(pb.DUPLICATE_HELLO)
    return int(pb.ILLEGAL_MESSAGE)


class JobPhase(Enum):
    """Where the whole job is."""

    RESTORED = "restored"  # resumed from a checkpoint; this run has not waited for clients yet
    WAITING = "waiting"
    ROUND = "round"
    EVALUATING = "evaluating"
    FINISHED = "finished"
    ABORTED = "aborted"


JOB_PHASES: dict[JobPhase, frozenset[JobPhase]] = {
    JobPhase.RESTORED: frozenset({JobPhase.WAITING, JobPhase.EVALUATING, JobPhase.ABORTED}),
    JobPhase.WAITING: frozenset({JobPhase.ROUND, JobPhase.ABORTED}),
    JobPhase.ROUND: frozenset(
        {JobPhase.WAITING, JobPhase.ROUND, JobPhase.EVALUATING, JobPhase.ABORTED}
    ),
    JobPhase.EVALUATING: frozenset({JobPhase.FINISHED, JobPhase.ABORTED}),
    JobPhase.FINISHED: frozenset(),
    JobPhase.ABORTED: frozenset(),
}


def next_phase(current: JobPhase, target: JobPhase) -> JobPhase:
    """Return ``target`` if the job may move there from ``current``; else raise PhaseError."""
    if target not in JOB_PHASES[current]:
        raise PhaseError(
            f"internal error: the job cannot move from {current.value} to {target.value}"
        )
    return target


class PhaseError(JobAbortedError, RuntimeError):
    """A phase transition that the table does not allow: the job aborts with this line."""
