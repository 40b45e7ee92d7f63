"""The session transition table and the job's phases."""

from __future__ import annotations

import inspect

import pytest

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server.session import ClientSession
from fedsilo.server.state_machine import (
    JOB_PHASES,
    RESUME,
    TRANSITIONS,
    Action,
    Event,
    JobPhase,
    SessionState,
    illegal_code,
    next_phase,
    transition,
)

S, E, A = SessionState, Event, Action
ALL_PAIRS = [(state, event) for state in S for event in E]
ILLEGAL_PAIRS = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), sorted(TRANSITIONS, key=str))
def test_every_transition_names_an_action_the_session_implements(state, event):
    action, _ = TRANSITIONS[(state, event)]
    method = getattr(ClientSession, f"_do_{action.value}", None)
    assert callable(method), f"ClientSession lacks _do_{action.value} for {state}/{event}"
    assert len(inspect.signature(method).parameters) == 3  # self, payload, nbytes


def test_every_action_is_used_and_implemented():
    used = {action for action, _ in TRANSITIONS.values()}
    assert used == set(Action)
    for action in Action:
        assert callable(getattr(ClientSession, f"_do_{action.value}", None)), action


def test_every_client_message_kind_is_an_event():
    fields = pb.ClientMessage.DESCRIPTOR.oneofs_by_name["body"].fields
    for field in fields:
        assert Event(field.name).value == field.name


@pytest.mark.parametrize(("state", "event"), ILLEGAL_PAIRS)
def test_illegal_pairs_are_answered_with_the_right_error_code(state, event):
    assert transition(state, event) is None
    code = illegal_code(state, event)
    if state is S.CONNECTED:
        assert code == pb.UNKNOWN_CLIENT
    elif event is E.HELLO:
        assert code == pb.DUPLICATE_HELLO
    else:
        assert code == pb.ILLEGAL_MESSAGE


def test_only_hello_admits_a_connected_session():
    legal = {event for (state, event) in TRANSITIONS if state is S.CONNECTED}
    assert legal == {E.HELLO, E.HEARTBEAT, E.ERROR, E.DISCONNECT}
    for event in (E.READY, E.SEND_MODEL, E.CHUNK, E.TRAILER, E.EVAL_RESULT):
        assert illegal_code(S.CONNECTED, event) == pb.UNKNOWN_CLIENT


@pytest.mark.parametrize("state", [s for s in S if s not in (S.CONNECTED, S.CLOSED)])
def test_hello_after_connected_is_a_duplicate(state):
    assert transition(state, E.HELLO) is None
    assert illegal_code(state, E.HELLO) == pb.DUPLICATE_HELLO


@pytest.mark.parametrize("state", [s for s in S if s is not S.CLOSED])
def test_heartbeat_error_and_disconnect_are_legal_in_every_open_state(state):
    assert transition(state, E.HEARTBEAT) == (A.NOTHING, state)
    assert transition(state, E.ERROR) == (A.LOG_PEER_ERROR, state)
    assert transition(state, E.DISCONNECT) == (A.DROP, S.CLOSED)


def test_nothing_is_legal_once_closed():
    assert [event for event in E if transition(S.CLOSED, event) is not None] == []


def test_happy_path_through_the_table():
    steps = [
        (E.HELLO, A.ADMIT, S.JOINED),
        (E.READY, A.MARK_READY, S.IDLE),
        (E.SYNC, A.SEND_SYNC, S.TRAINING),
        (E.SEND_MODEL, A.BEGIN_UPLOAD, S.UPLOADING),
        (E.CHUNK, A.RECEIVE_CHUNK, S.UPLOADING),
        (E.CHUNK, A.RECEIVE_CHUNK, S.UPLOADING),
        (E.TRAILER, A.FINISH_UPLOAD, S.IDLE),
        (E.SYNC, A.SEND_SYNC, S.TRAINING),
        (E.SEND_MODEL, A.BEGIN_UPLOAD, S.UPLOADING),
        (E.TRAILER, A.FINISH_UPLOAD, S.IDLE),
        (E.EVALUATE, A.SEND_EVALUATE, S.EVALUATING),
        (E.EVAL_RESULT, A.RECORD_EVALUATION, S.IDLE),
        (E.DISCONNECT, A.DROP, S.CLOSED),
    ]
    state = S.CONNECTED
    for event, action, after in steps:
        step = transition(state, event)
        assert step == (action, after), f"{state}/{event}"
        state = after
    assert state is S.CLOSED


def test_a_refused_stream_is_discarded_up_to_its_trailer_then_resumes():
    for state in (S.JOINED, S.IDLE, S.TRAINING, S.UPLOADING, S.EVALUATING):
        assert transition(state, E.REFUSE_STREAM) == (A.START_DISCARD, S.DISCARDING)
    assert transition(S.DISCARDING, E.CHUNK) == (A.DISCARD_CHUNK, S.DISCARDING)
    assert transition(S.DISCARDING, E.TRAILER) == (A.END_DISCARD, RESUME)
    assert transition(S.DISCARDING, E.SEND_MODEL) is None
    resumers = [pair for pair, (_, after) in TRANSITIONS.items() if after is RESUME]
    assert resumers == [(S.DISCARDING, E.TRAILER)]


def test_model_uploads_are_taken_only_in_training_or_idle():
    # IDLE takes a SendModel only so that a duplicate or late one is ignored quietly.
    for state in S:
        if state not in (S.TRAINING, S.IDLE):
            assert transition(state, E.SEND_MODEL) is None, state
    assert transition(S.IDLE, E.SEND_MODEL) == transition(S.TRAINING, E.SEND_MODEL)


# ------------------------------------------------------------------ job phases


def test_job_phases_happy_path():
    phase = JobPhase.WAITING
    for target in (JobPhase.ROUND, JobPhase.ROUND, JobPhase.EVALUATING, JobPhase.FINISHED):
        phase = next_phase(phase, target)
    assert phase is JobPhase.FINISHED


def test_round_can_fall_back_to_waiting():
    assert next_phase(JobPhase.ROUND, JobPhase.WAITING) is JobPhase.WAITING


def test_finished_job_cannot_start_a_round():
    with pytest.raises(RuntimeError, match="finished"):
        next_phase(JobPhase.FINISHED, JobPhase.ROUND)


@pytest.mark.parametrize("phase", [JobPhase.WAITING, JobPhase.ROUND, JobPhase.EVALUATING])
def test_any_running_phase_can_abort(phase):
    assert next_phase(phase, JobPhase.ABORTED) is JobPhase.ABORTED


@pytest.mark.parametrize("terminal", [JobPhase.FINISHED, JobPhase.ABORTED])
def test_terminal_phases_go_nowhere(terminal):
    for target in JobPhase:
        with pytest.raises(RuntimeError):
            next_phase(terminal, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobPhase.WAITING, JobPhase.EVALUATING),
        (JobPhase.WAITING, JobPhase.FINISHED),
        (JobPhase.ROUND, JobPhase.FINISHED),
        (JobPhase.EVALUATING, JobPhase.ROUND),
    ],
)
def test_skipping_phases_is_refused(current, target):
    with pytest.raises(RuntimeError):
        next_phase(current, target)


def test_every_phase_has_a_rule():
    assert set(JOB_PHASES) == set(JobPhase)
