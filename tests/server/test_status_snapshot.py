"""GET /status's document, from a JobState built by hand: every client state, the round, rows."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from fedsilo.server.job_state import FinalEvaluation
from fedsilo.server.registry import ClientRegistry, Member, Stage
from fedsilo.server.state_machine import JobPhase
from fedsilo.server.status import STATE_OF_STAGE, StatusView, copy_state
from fedsilo.server.telemetry import model_frames
from tests.server.status_helpers import config, federation, model_stream


def test_the_snapshot_says_what_each_client_is_doing(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    status = StatusView(config(tmp_path), fed.state, fed.telemetry).status()

    by_name = {c["name"]: c for c in status["clients"]}
    assert [c["client_id"] for c in status["clients"]] == list(range(7))
    assert {name: c["state"] for name, c in by_name.items()} == {
        "org-old": "disconnected",
        "org-down": "downloading",
        "org-train": "training",
        "org-up": "uploading",
        "org-done": "idle",
        "org-new": "connected",
        "org-gone": "dropped",
    }
    # 3 of the stream's 12 frames (opening, 10 chunks, trailer) are out; 250 of 1000 bytes in.
    assert by_name["org-down"]["progress"] == 3 / 12
    assert by_name["org-down"]["detail"] == "downloading 25%"
    assert by_name["org-up"]["progress"] == 0.25
    assert by_name["org-up"]["detail"] == "uploading 25%"
    assert by_name["org-train"]["progress"] is None
    assert by_name["org-train"]["work"] == "train 2"
    assert by_name["org-train"]["last_progress_seconds"] == 0.25
    gone = by_name["org-gone"]
    assert gone["connected"] is False
    assert gone["detail"] == "dropped in round 2: disconnected (while training)"
    assert gone["drop"]["reason"] == "disconnected" and gone["drop"]["round"] == 2
    # A drop of the last completed round stays visible on a client that came back.
    assert by_name["org-new"]["drop"]["reason"] == "stalled: no progress for 30s"
    assert by_name["org-new"]["drop"]["round"] == 1
    assert by_name["org-old"]["detail"] == "not connected"
    assert by_name["org-done"]["detail"] == "idle: update in"


def test_the_snapshot_has_the_job_its_round_and_its_rows(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    status = StatusView(config(tmp_path), fed.state, fed.telemetry).status()

    job = status["job"]
    assert (job["job_id"], job["phase"], job["round"], job["rounds"]) == (3, "round", 2, 5)
    assert job["rounds_completed"] == 1 and job["task"] == "synthetic"
    assert job["started_at"].endswith("+00:00") and job["uptime_seconds"] >= 0
    current = status["round"]
    ids = fed.ids
    assert current["number"] == 2
    assert current["selected"] == sorted(
        ids[n] for n in ("org-down", "org-train", "org-up", "org-done", "org-gone")
    )
    # org-done's update is in, but waits for its turn in client-id order: not folded yet.
    assert current["folded"] == []
    assert current["outstanding"] == [ids["org-down"], ids["org-train"], ids["org-up"]]
    assert current["delivered"] == 1
    assert [d["client_id"] for d in current["dropped"]] == [ids["org-gone"]]
    assert (status["clients_connected"], status["clients_ready"]) == (5, 1)
    assert [h["round"] for h in status["history"]] == [0, 1]
    assert status["history"][0]["eval_accuracy"] == 0.5
    assert status["history"][1]["train_loss"] == 0.5 and status["history"][1]["seconds"] == 2.0
    assert status["rows"][-1]["round"] == 1
    json.dumps(status, allow_nan=False)  # what the admin server sends


def test_the_copy_is_taken_under_the_jobs_condition_and_released_before_the_rest(
    tmp_path: Path,
) -> None:
    held: list[bool] = []

    class WatchedRegistry(ClientRegistry):
        def members(self) -> list[Member]:
            held.append(state.cond._is_owned())  # type: ignore[attr-defined]
            return super().members()

    fed = federation(tmp_path, registry_class=WatchedRegistry)
    state = fed.state
    telemetry = fed.telemetry
    read_transfers = telemetry.transfers
    released: list[bool] = []

    def transfers():  # type: ignore[no-untyped-def]
        released.append(not state.cond._is_owned())  # type: ignore[attr-defined]
        return read_transfers()

    telemetry.transfers = transfers  # type: ignore[method-assign]
    StatusView(config(tmp_path), state, telemetry).status()
    assert held == [True]
    assert released == [True]


def test_a_status_request_waits_while_another_thread_holds_the_condition(
    tmp_path: Path,
) -> None:
    fed = federation(tmp_path)
    copied = threading.Event()
    with fed.state.cond:
        reader = threading.Thread(target=lambda: (copy_state(fed.state), copied.set()))
        reader.start()
        assert not copied.wait(0.2), "copied while the coordinator held the condition"
    assert copied.wait(10)
    reader.join(10)


def test_the_final_evaluation_and_the_end_of_a_job(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    state = fed.state
    with state.cond:
        state.round = None
        state.rounds_completed = 5
        state.phase = JobPhase.EVALUATING
        state.final = FinalEvaluation(5, {fed.ids["org-train"]})
    status = StatusView(config(tmp_path), state, fed.telemetry).status()
    assert status["job"]["phase"] == "evaluating"
    assert status["job"]["round"] == 5
    assert status["round"] is None
    assert status["final_evaluation"] == {"outstanding": [fed.ids["org-train"]]}


def test_the_frames_of_a_model_stream_are_counted_exactly() -> None:
    # opening + ceil(100 bytes / 10) chunks + trailer
    assert model_frames(model_stream(), 10) == 12


def test_every_stage_of_the_registry_has_a_state_on_the_page() -> None:
    assert set(STATE_OF_STAGE) == set(Stage)
