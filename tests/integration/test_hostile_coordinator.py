"""A real fl-client against a hostile coordinator (tests/integration/hostile_coordinator.py).

Each attack is its own test. For each, the client refuses with one clear line, runs nothing
(no marker file of tests/integration/canary_task.py or import_canary.py appears), and, where the
protocol lets it, the hostile server receives the client's Error with the right code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedsilo.common.proto import federation_pb2 as pb
from tests.integration.canary_task import EVALUATED, TRAINED, CanaryTask
from tests.integration.conftest import REPO, Daemon, Daemons
from tests.integration.hostile_coordinator import (
    HostileCoordinator,
    Peer,
    header,
    init_config,
    sync_inline,
    sync_with_many_tensors,
    train_config,
)
from tests.integration.import_canary import IMPORTED

CANARY = "tests.integration.canary_task:CanaryTask"
MARKERS = (TRAINED, EVALUATED, IMPORTED, "POPENED")
LOCAL = ("--task", CANARY)  # the operator names the task its client runs
BUILTIN: tuple[str, ...] = ()  # no local task: built-in tasks only


def canary_state() -> dict[str, torch.Tensor]:
    """The weights a client of CanaryTask builds for seed 0: what a valid model stream carries."""
    return dict(CanaryTask().build_model(0).state_dict())


def start_client(daemons: Daemons, port: int, *args: str) -> Daemon:
    """A real fl-client dialling the hostile coordinator."""
    return daemons.client(port, "silo", "--connect-timeout", "20", *args)


def assert_refused(client: Daemon, workdir: Path, exit_code: int, *phrases: str) -> str:
    """The client exits with ``exit_code`` and one last line naming the refusal; no marker."""
    code = client.wait(timeout=60)
    line = client.stderr.read_text().strip().splitlines()[-1]
    assert code == exit_code, client.tail()
    assert line.startswith("fl-client: error: "), client.tail()
    for phrase in phrases:
        assert phrase in line, line
    present = [marker for marker in MARKERS if (workdir / marker).exists()]
    assert present == [], f"the attack ran something: {present}"
    return line


def error_codes(coordinator: HostileCoordinator) -> list[str]:
    """Names of the codes of every Error the client sent."""
    return [pb.ErrorCode.Name(error.code) for error in coordinator.errors()]


def audit_events(workdir: Path) -> list[dict[str, object]]:
    """The client's audit.jsonl rows."""
    path = workdir / "runs" / "client-silo" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def send_only(*messages: pb.ServerMessage | bytes, hang_up: bool = False) -> object:
    """A script: read Hello, send ``messages`` (reading Ready after an InitConfig).

    ``hang_up``: then end the stream at once, rather than wait for the client to end its side.
    """

    def script(peer: Peer) -> Iterator[pb.ServerMessage | bytes]:
        peer.next("hello")
        for message in messages:
            yield message
            if isinstance(message, pb.ServerMessage) and message.HasField("init_config"):
                peer.next("ready")
        if hang_up:
            peer.hang_up()

    return script


def joined_then(*messages: pb.ServerMessage | bytes) -> object:
    """A script: a valid InitConfig of the canary task, then ``messages``."""
    return send_only(init_config(CANARY, {}), *messages)


# ---------------------------------------------------------------- the task: nothing is imported


@pytest.mark.parametrize("policy", [BUILTIN, LOCAL], ids=["builtin-only", "local-task"])
def test_a_module_path_outside_the_policy_is_never_imported(
    daemons: Daemons, tmp_path: Path, policy: tuple[str, ...]
) -> None:
    attack = init_config("tests.integration.import_canary:Task", {})
    with HostileCoordinator(send_only(attack)) as coordinator:
        client = start_client(daemons, coordinator.port, *policy)
        assert_refused(client, tmp_path, 2, "refused the server's job", "import_canary")
    assert error_codes(coordinator) == ["POLICY_MISMATCH"]


@pytest.mark.parametrize("policy", [BUILTIN, LOCAL], ids=["builtin-only", "local-task"])
def test_a_stdlib_callable_as_the_task_runs_nothing(
    daemons: Daemons, tmp_path: Path, policy: tuple[str, ...]
) -> None:
    marker = tmp_path / "POPENED"
    attack = init_config("subprocess:Popen", {"args": ["touch", str(marker)]})
    with HostileCoordinator(send_only(attack)) as coordinator:
        client = start_client(daemons, coordinator.port, *policy)
        assert_refused(client, tmp_path, 2, "'subprocess:Popen'")
    assert error_codes(coordinator) == ["POLICY_MISMATCH"]
    refused = [row for row in audit_events(tmp_path) if row["event"] == "refused"]
    assert [row["code"] for row in refused] == ["POLICY_MISMATCH"]


EXTRA_OPTIONS = {
    "local-task": (LOCAL, CANARY, {"extra": 1}, "'extra' (only the server's)"),
    "builtin-unknown-option": (BUILTIN, "synthetic", {"extra": 1}, "no option 'extra'"),
    "builtin-non-scalar": (BUILTIN, "synthetic", {"args": ["touch", "x"]}, "'args' is a list"),
    "builtin-local-path": (BUILTIN, "shakespeare", {"cache_dir": "/etc"}, "'cache_dir'"),
}


@pytest.mark.parametrize("case", EXTRA_OPTIONS.values(), ids=EXTRA_OPTIONS.keys())
def test_options_with_extra_keys_are_refused(
    daemons: Daemons, tmp_path: Path, case: tuple[tuple[str, ...], str, dict[str, object], str]
) -> None:
    policy, task, options, phrase = case
    with HostileCoordinator(send_only(init_config(task, options))) as coordinator:
        client = start_client(daemons, coordinator.port, *policy)
        assert_refused(client, tmp_path, 2, phrase)
    assert error_codes(coordinator) == ["POLICY_MISMATCH"]


def test_a_second_init_config_with_another_task_on_the_stream_is_refused(
    daemons: Daemons, tmp_path: Path
) -> None:
    marker = tmp_path / "POPENED"
    second = init_config("subprocess:Popen", {"args": ["touch", str(marker)]})
    with HostileCoordinator(joined_then(second)) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL)
        assert_refused(client, tmp_path, 1, "init_config is not allowed while ready")
    assert error_codes(coordinator) == ["ILLEGAL_MESSAGE"]


def test_another_task_for_the_same_job_after_a_reconnect_is_refused(
    daemons: Daemons, tmp_path: Path
) -> None:
    first = send_only(init_config("synthetic", {"max_samples": 40}), hang_up=True)
    second = send_only(init_config("digits", {}))
    with HostileCoordinator(first, second) as coordinator:
        client = start_client(daemons, coordinator.port)
        assert_refused(client, tmp_path, 2, "changed job 5's task mid-job", "'digits'")
    assert coordinator.sessions == 2
    assert error_codes(coordinator) == ["POLICY_MISMATCH"]


# ---------------------------------------------------------------- training settings


def test_local_epochs_out_of_bounds_at_join_are_refused(daemons: Daemons, tmp_path: Path) -> None:
    attack = init_config(CANARY, {}, train=train_config(local_epochs=10**6))
    with HostileCoordinator(send_only(attack)) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL)
        assert_refused(client, tmp_path, 2, "local_epochs 1000000 not in 1..1000")
    assert error_codes(coordinator) == ["POLICY_MISMATCH"]


def test_a_learning_rate_out_of_bounds_in_a_round_is_refused(
    daemons: Daemons, tmp_path: Path
) -> None:
    attack = sync_inline(canary_state(), train=train_config(learning_rate=1e9))
    with HostileCoordinator(joined_then(attack)) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL)
        assert_refused(client, tmp_path, 2, "round 1's training", "learning_rate 1e+09")
    assert error_codes(coordinator) == ["POLICY_MISMATCH"]


def test_a_round_count_out_of_bounds_is_refused(daemons: Daemons, tmp_path: Path) -> None:
    attack = init_config(CANARY, {}, rounds=10**9)
    with HostileCoordinator(send_only(attack)) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL, "--max-rounds", "50")
        assert_refused(client, tmp_path, 2, "1000000000 rounds", "max_rounds is 50")
    assert error_codes(coordinator) == ["POLICY_MISMATCH"]


# ---------------------------------------------------------------- model streams


def test_a_model_stream_declaring_2_40_bytes_is_refused_before_allocating(
    daemons: Daemons, tmp_path: Path
) -> None:
    huge = pb.TensorStreamHeader(total_bytes=1 << 40)
    huge.tensors.add(name="weight", dtype="float32", shape=[1 << 38], nbytes=1 << 40)
    attack = pb.ServerMessage(sync_model=pb.SyncModel(round=1, train=train_config(), model=huge))
    with HostileCoordinator(joined_then(attack)) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL)
        assert_refused(client, tmp_path, 1, "refused the server's model", "more than the limit")
    assert error_codes(coordinator) == ["BAD_TENSOR_STREAM"]


def test_a_model_stream_listing_10_6_tensors_is_refused(daemons: Daemons, tmp_path: Path) -> None:
    with HostileCoordinator(joined_then(sync_with_many_tensors(10**6))) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL)
        assert_refused(client, tmp_path, 1, "header lists 1000000 tensors, at most 2")
    assert error_codes(coordinator) == ["BAD_TENSOR_STREAM"]


def test_a_checksum_mismatch_is_refused(daemons: Daemons, tmp_path: Path) -> None:
    state = canary_state()
    with HostileCoordinator(joined_then(sync_inline(state, checksum=12345))) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL)
        assert_refused(client, tmp_path, 1, "checksum mismatch", "nothing trained")
    assert error_codes(coordinator) == ["BAD_TENSOR_STREAM"]


def test_nan_weights_are_refused_and_nothing_is_trained(daemons: Daemons, tmp_path: Path) -> None:
    state = canary_state()
    state["weight"][0, 1] = float("nan")
    with HostileCoordinator(joined_then(sync_inline(state))) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL)
        assert_refused(client, tmp_path, 1, "'weight' holds NaN or infinite values")
    assert error_codes(coordinator) == ["BAD_TENSOR_STREAM"]
    received = [row for row in audit_events(tmp_path) if row["event"] == "model_received"]
    assert received == []  # a refused model is not recorded as received


def test_the_header_of_a_valid_stream_is_what_the_client_expects(
    daemons: Daemons, tmp_path: Path
) -> None:
    """The control: the same coordinator with a valid model gets a trained update back."""
    state = canary_state()
    finish = pb.ServerMessage(finish=pb.Finish(rounds_completed=1))

    def script(peer: Peer) -> Iterator[pb.ServerMessage | bytes]:
        peer.next("hello")
        yield init_config(CANARY, {}, rounds=1)
        peer.next("ready")
        yield sync_inline(state)
        update = peer.next("send_model")
        assert update.round == 1 and update.update.tensors[0].name == "weight"
        assert list(update.update.tensors) == list(header(state).tensors)
        yield finish

    with HostileCoordinator(script) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL)
        assert client.wait(timeout=60) == 0, client.tail()
    assert (tmp_path / TRAINED).exists()  # so the markers of the other tests can appear
    assert coordinator.errors() == []


def test_the_import_canary_leaves_its_marker_when_imported(tmp_path: Path) -> None:
    """The control of the import attack: importing the module does leave IMPORTED."""
    subprocess.run(
        [sys.executable, "-c", "import tests.integration.import_canary"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        timeout=60,
    )
    assert (tmp_path / IMPORTED).exists()


# ---------------------------------------------------------------- a server that says nothing


def test_a_server_that_sends_nothing_after_init_config_is_given_up(
    daemons: Daemons, tmp_path: Path
) -> None:
    ready_at: list[float] = []

    def script(peer: Peer) -> Iterator[pb.ServerMessage | bytes]:
        peer.next("hello")
        yield init_config(CANARY, {})
        peer.next("ready")
        ready_at.append(time.monotonic())
        peer.wait_closed(timeout=60)  # and never a word more

    with HostileCoordinator(script) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL, "--idle-timeout", "2")
        assert_refused(client, tmp_path, 1, "made no progress for 2s (--idle-timeout)")
        gave_up_after = time.monotonic() - ready_at[0]
    # 2 s of silence, the watch polls every 0.5 s, and the process exits: well under 10 s.
    assert 2.0 <= gave_up_after < 10.0


def test_a_message_above_the_clients_cap_ends_it_without_a_retry(
    daemons: Daemons, tmp_path: Path
) -> None:
    cap = (64 << 20) + (4 << 20)  # docs/protocol.md, "Message cap"
    oversized = pb.ServerMessage(chunk=pb.TensorChunk(data=b"\x00" * (cap + 1)))
    with HostileCoordinator(joined_then(oversized)) as coordinator:
        client = start_client(daemons, coordinator.port, *LOCAL)
        assert_refused(client, tmp_path, 1, "a message above this client's cap of 71303168 bytes")
    assert coordinator.sessions == 1  # it did not come back for more
