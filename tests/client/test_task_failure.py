"""A task's exception becomes one TASK_FAILED to the server; a stop request does not."""

from __future__ import annotations

import pickle

import pytest

from fedsilo.client.task_failure import task_code, telling_server
from fedsilo.common.errors import ConfigError, StopRequestedError, TaskFailedError
from fedsilo.common.proto import federation_pb2 as pb


def run_step(error: BaseException) -> list[pb.ClientMessage]:
    """Run a protocol step whose task code raises ``error``; return what was sent."""
    sent: list[pb.ClientMessage] = []

    def step(payload: object) -> None:
        with task_code("training in round 2"):
            raise error

    with pytest.raises((TaskFailedError, StopRequestedError)):
        telling_server(step, None, sent.append)
    return sent


def test_a_task_exception_is_sent_once_as_one_line() -> None:
    sent = run_step(RuntimeError("mat1 and mat2 shapes\ncannot be multiplied"))
    assert [m.error.code for m in sent] == [pb.TASK_FAILED]
    assert sent[0].error.message == "RuntimeError: mat1 and mat2 shapes cannot be multiplied"


def test_the_task_exception_is_kept_as_the_cause() -> None:
    cause = KeyError("label")
    with pytest.raises(TaskFailedError) as raised, task_code("loading its data"):
        raise cause
    assert raised.value.__cause__ is cause and raised.value.exit_code == 3


def test_a_stop_request_in_the_middle_of_training_is_no_task_failure() -> None:
    assert run_step(StopRequestedError("stopped by SIGTERM")) == []


def test_a_long_message_is_cut() -> None:
    sent = run_step(ValueError("x" * 5000))
    assert len(sent[0].error.message) == 300 and sent[0].error.message.endswith("...")


def test_a_configuration_error_the_task_raises_keeps_its_exit_code() -> None:
    with pytest.raises(TaskFailedError) as raised, task_code("loading its data"):
        raise ConfigError("partition 2 is out of range: the task has 2 clients")
    assert raised.value.exit_code == 2
    assert raised.value.line == "ConfigError: partition 2 is out of range: the task has 2 clients"


def test_the_error_survives_a_process_boundary() -> None:
    # Ray and multiprocessing pickle exceptions: an __init__ with its own arguments needs this.
    error = pickle.loads(pickle.dumps(TaskFailedError("training in round 1", "KeyError: 'y'", 2)))
    assert (error.doing, error.line, error.exit_code) == ("training in round 1", "KeyError: 'y'", 2)
