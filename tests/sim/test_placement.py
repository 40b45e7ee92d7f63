"""Free placement (sim/placement.py): a round's model streams go to idle workers when the
clients keep no state between rounds, and the result stays the one of a sequential run."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.server.sampling import sample_clients
from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from fedsilo.sim.placement import Placement, free_placement, portable

PROBE = "tests.sim.probe_task:ProbeTask"


def init_frame(client_id: int, **job: Any) -> bytes:
    init = pb.InitConfig(client_id=client_id, job=pb.JobConfig(job_id=0, **job))
    return pb.ServerMessage(init_config=init).SerializeToString()


def placement(clients: int, depth: int = 1, **job: Any) -> Placement:
    """Two workers; every client joined (client i first lives in worker i % 2)."""
    made = Placement(2, clients, free=True, depth=depth)
    for index in range(clients):
        made.joined(index, init_frame(index, **job), record_dp=False)
    return made


def test_a_client_whose_first_host_is_busy_is_adopted_by_the_idle_worker() -> None:
    places = placement(4)
    assert places.acquire(0) == (0, None)  # at home: nothing to adopt
    worker, adopt = places.acquire(2) or (None, None)  # its home, worker 0, is busy
    assert worker == 1 and adopt == init_frame(2)
    assert places.speaker(2) == 1
    places.release(1)
    assert places.acquire(2) == (1, None)  # worker 1 holds it now: no second adoption


def test_an_idle_worker_is_left_to_the_waiting_client_it_already_holds() -> None:
    places = placement(4)
    assert places.acquire(0) == (0, None)
    assert places.acquire(1) == (1, None)
    got: dict[int, Any] = {}
    waiters = {
        index: threading.Thread(target=lambda i=index: got.update({i: places.acquire(i)}))
        for index in (3, 2)  # 3 lives in worker 1, 2 in worker 0
    }
    for waiter in waiters.values():
        waiter.start()
    for _ in range(1000):  # bounded: until both wait (each thread starts in microseconds)
        if places.waiting() == {2, 3}:
            break
        threading.Event().wait(0.005)
    assert places.waiting() == {2, 3}
    places.release(0)  # worker 0 is client 2's: client 3 must not adopt itself there
    waiters[2].join(timeout=10)
    assert got[2] == (0, None) and 3 not in got
    places.release(1)
    waiters[3].join(timeout=10)
    assert got[3] == (1, None)


@pytest.mark.parametrize(
    "job",
    [
        {"compression": pb.Compression(codec="topk", topk_fraction=0.1)},
        {"control_variates": True},
        {"secure_aggregation": pb.SecAggSettings()},
        {"require_dp": True},
    ],
)
def test_a_client_that_keeps_state_waits_for_its_own_worker(job: dict[str, Any]) -> None:
    places = placement(4, **job)
    assert places.acquire(0) == (0, None)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(places.acquire(2)))
    waiter.start()
    waiter.join(timeout=0.3)  # worker 1 is idle all along: client 2 must not go there
    assert waiter.is_alive() and not got
    places.release(0)
    waiter.join(timeout=10)
    assert got == [(0, None)]


def test_a_worker_takes_a_second_stream_only_when_none_is_idle() -> None:
    places = placement(6, depth=2)
    assert places.acquire(0) == (0, None)
    assert places.acquire(2)[0] == 1  # type: ignore[index]  # worker 1 is idle: adopted there
    assert places.acquire(4) == (0, None)  # both hold one: the next goes to a home with room
    worker, _ = places.acquire(1) or (None, None)
    assert worker == 1
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(places.acquire(3)))
    waiter.start()
    waiter.join(timeout=0.3)  # both hold two: client 3 waits
    assert waiter.is_alive() and not got
    places.release(0)
    waiter.join(timeout=10)
    assert got and got[0][0] == 0


def test_portable_only_without_client_state() -> None:
    def init(**job: Any) -> pb.InitConfig:
        return pb.InitConfig(client_id=0, job=pb.JobConfig(**job))

    assert portable(init(), record_dp=False)
    assert portable(init(compression=pb.Compression(codec="int8")), record_dp=False)
    assert not portable(init(), record_dp=True)  # the silo's own DP-SGD budget
    assert not portable(init(compression=pb.Compression(codec="topk")), record_dp=False)


def test_a_dead_worker_takes_the_clients_it_spoke_for_and_the_rest_move() -> None:
    places = placement(4)
    assert places.acquire(2) == (0, None)
    places.release(0)
    assert places.acquire(0) == (0, None)
    assert places.acquire(1) == (1, None)
    assert places.lost(0) == [0, 2]  # client 2 spoke last from worker 0, as did client 0
    places.release(1)
    worker, adopt = places.acquire(2) or (None, None)  # were it still in the job: worker 1
    assert worker == 1 and adopt == init_frame(2)
    fixed = Placement(2, 4, free=False, depth=1)
    assert fixed.acquire(1) == (1, None)
    assert fixed.lost(0) == [0, 2]
    assert fixed.acquire(2) is None  # its one worker is gone: never a hang


def model(run: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run / "model.pt", weights_only=True)
    return state


def test_a_round_whose_clients_share_a_worker_trains_them_in_two(tmp_path: Path) -> None:
    # Seed 5 draws clients 0 and 2 in round 1, both created in worker 0 of 2.
    assert sample_clients(range(4), seed=5, round_number=1, count=2) == [0, 2]
    spans, finals = {}, {}
    for mode in ("auto", "fixed"):
        record = tmp_path / f"record-{mode}"
        record.mkdir()
        setting = SimConfig(
            task=PROBE,
            clients=4,
            clients_per_round=2,
            rounds=1,
            seed=5,
            threads=1,
            workers=2,
            placement=mode,
            task_options={"record": str(record), "sleep": 1.0},
            out=tmp_path / mode,
        )
        assert simulate(setting).outcome.finished
        spans[mode] = [(record / f"{p}-1").read_text().split() for p in (0, 2)]
        finals[mode] = model(tmp_path / mode)
    pids = {mode: {int(span[0]) for span in spans[mode]} for mode in spans}
    assert len(pids["auto"]) == 2 and len(pids["fixed"]) == 1
    starts, ends = [float(s[1]) for s in spans["auto"]], [float(s[2]) for s in spans["auto"]]
    assert max(starts) < min(ends), "the two trainings did not overlap"
    for name, tensor in finals["fixed"].items():
        assert torch.equal(finals["auto"][name], tensor), name


def test_free_placement_ends_with_the_in_process_model_bit_for_bit(tmp_path: Path) -> None:
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        setting = SimConfig(
            task=PROBE, clients=6, clients_per_round=3, rounds=4, seed=7, threads=1,
            workers=workers, placement="auto" if workers else None, out=out,
        )  # fmt: skip
        assert simulate(setting).outcome.finished
        runs[workers] = model(out)
    assert runs[0].keys() == runs[2].keys()
    for name, tensor in runs[0].items():
        assert torch.equal(runs[2][name], tensor), name


def test_by_default_only_the_built_in_tasks_move_between_workers() -> None:
    assert free_placement(None, "fmnist") and free_placement(None, "synthetic")
    assert not free_placement(None, PROBE)  # a user's task may keep state of its own
    assert free_placement("auto", PROBE) and not free_placement("fixed", "fmnist")
