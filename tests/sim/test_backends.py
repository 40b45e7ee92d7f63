"""fl-sim's local backend: worker processes train a round's clients in parallel and end with
the model one process gives, bit for bit; a client that fails is reported and dropped, or
stops the job while joining; never a hang (every run here is bounded by pytest's timeout)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from fedsilo.sim.host import JOINING, TRAINING
from fedsilo.sim.summary import read_rows

PROBE = "tests.sim.probe_task:ProbeTask"


def config(out: Path, **fields: Any) -> SimConfig:
    base: dict[str, Any] = {"task": PROBE, "clients": 4, "rounds": 2, "seed": 5, "threads": 1}
    return SimConfig(**{**base, **fields, "out": out})


def model(run: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run / "model.pt", weights_only=True)
    return state


def test_in_process_one_worker_and_two_end_with_the_same_model_bit_for_bit(tmp_path: Path):
    # Top-k keeps an error-feedback residual per client across rounds, while the clients of
    # a worker share one model: a residual kept per model, or a stream decoded into the model
    # while another client trains, would change the bits.
    runs = {}
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}"
        setting = config(
            out,
            clients=5,
            clients_per_round=3,
            rounds=3,
            compression="topk",
            topk_fraction=0.3,
            workers=workers,
        )
        result = simulate(setting)
        assert result.outcome.finished and result.workers == workers
        assert (result.train_examples, result.test_examples) == (5 * 48, 5 * 12)
        runs[workers] = out
    rows = {w: [row.get("participants") for row in read_rows(out)] for w, out in runs.items()}
    assert rows[0] == rows[1] == rows[2]
    assert len({tuple(r) for r in rows[0][1:] if r}) > 1  # sampling drew different clients
    reference = model(runs[0])
    for workers in (1, 2):
        other = model(runs[workers])
        assert other.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(other[name], tensor), (workers, name)


def test_two_workers_train_the_clients_of_a_round_at_the_same_time(tmp_path: Path):
    record = tmp_path / "record"
    record.mkdir()
    setting = config(
        tmp_path / "run",
        clients=2,
        rounds=1,
        workers=2,
        task_options={"record": str(record), "sleep": 1.0},
    )
    assert simulate(setting).outcome.finished
    spans = [(record / f"{p}-1").read_text().split() for p in (0, 1)]
    pids = {int(span[0]) for span in spans}
    assert len(pids) == 2 and os.getpid() not in pids  # one worker process each
    starts, ends = [float(s[1]) for s in spans], [float(s[2]) for s in spans]
    assert max(starts) < min(ends), "the two trainings did not overlap"


def test_a_client_whose_data_fails_to_load_stops_the_job_naming_it(tmp_path: Path):
    setting = config(tmp_path / "run", workers=2, task_options={"fail": "load_data@1"})
    result = simulate(setting)
    assert not result.outcome.finished
    assert "client sim-00001 failed while joining: FileNotFoundError: no data for partition 1" in (
        result.outcome.reason
    )
    assert [(f.index, f.stage) for f in result.failures] == [(1, JOINING)]
    assert "probe_task.py" in result.failures[0].traceback


def test_a_wrong_task_option_stops_the_job_naming_it(tmp_path: Path):
    # The task splits its data in 2, the simulation has 3 clients: client 2 cannot join.
    setting = config(
        tmp_path / "run", task="digits", clients=3, workers=0, task_options={"clients": 2}
    )
    result = simulate(setting)
    assert not result.outcome.finished
    assert (
        "client sim-00002 failed while joining: ConfigError: partition 2 is out of range: "
        "the task has 2 clients" in result.outcome.reason
    )


def test_in_process_a_client_that_raises_in_training_is_dropped_and_the_job_goes_on(
    tmp_path: Path,
):
    out = tmp_path / "run"
    result = simulate(config(out, clients=3, workers=0, task_options={"fail": "train@1"}))
    assert result.outcome.finished
    assert [(f.index, f.stage) for f in result.failures] == [(1, TRAINING)]
    assert result.failures[0].error.startswith("RuntimeError: mat1 and mat2 shapes")
    rows = read_rows(out)
    assert [(d["client_id"], d["phase"]) for d in rows[1]["dropped"]] == [(1, "training")]
    assert rows[2]["participants"] == [0, 2]


def run_cli(tmp_path: Path, *argv: str, options: dict[str, Any]) -> Any:
    import subprocess
    import sys

    file = tmp_path / "sim.toml"
    file.write_text(
        "[task_options]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # tests.sim.probe_task
    return subprocess.run(
        [str(Path(sys.executable).parent / "fl-sim"), "--config", str(file), "--task", PROBE,
         "--seed", "5", "--threads", "1", "--out", str(tmp_path / "run"), *argv],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )  # fmt: skip


def test_fl_sim_drops_a_client_that_raises_and_those_of_a_killed_worker_in_one_line_each(
    tmp_path: Path,
):
    # Two workers: worker 0 hosts clients 0 and 2, worker 1 hosts 1 and 3 (fixed placement:
    # they never move). Client 1 raises in training; client 2 kills worker 0, which takes
    # client 0 with it. Client 3 carries on.
    done = run_cli(
        tmp_path,
        *("--clients", "4", "--rounds", "2", "--workers", "2", "--placement", "fixed"),
        options={"fail": "train@1 die@2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("fl-sim: client")]
    assert len(said) == 3, done.stderr
    assert (
        "fl-sim: client sim-00001 failed while training: RuntimeError: mat1 and mat2 shapes "
        "cannot be multiplied (16x8 and 9x2); dropped from the job (traceback in the log)" in said
    )
    for index in (0, 2):
        assert any(
            line.startswith(f"fl-sim: client sim-0000{index} failed while ")
            and "worker 0 (pid " in line
            and "was killed by SIGKILL; dropped from the job" in line
            for line in said
        ), said
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    failed = [line for line in logged if line["event"] == "client_failed" and line["client"] == 1]
    assert "probe_task.py" in failed[0]["traceback"]  # the traceback is in the log
    rows = read_rows(tmp_path / "run")
    dropped = {d["client_id"] for d in rows[1]["dropped"]}
    assert {1, 2} <= dropped <= {0, 1, 2}  # client 0 is in it if it had not uploaded yet
    assert rows[2]["participants"] == [3]
    out = done.stdout
    assert "4 clients" in out and "local backend, in 2 worker processes, 1 torch thread each" in out
    assert "fl-sim: 2 rounds in " in out and "seconds per round: median " in out
    assert "fl-sim: final model (round 2): accuracy " in out and "on 12 held-out samples" in out
    assert f"metrics in {tmp_path / 'run' / 'metrics.jsonl'}" in out


def test_fl_sim_stops_with_exit_1_when_a_client_cannot_join(tmp_path: Path):
    done = run_cli(tmp_path, "--clients", "3", "--workers", "0", options={"fail": "load_data@2"})
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("fl-sim:")]
    assert lines[0] == (
        "fl-sim: client sim-00002 failed while joining: FileNotFoundError: no data for "
        "partition 2 in /nowhere; the simulation stops (traceback in the log)"
    )
    assert lines[-1].startswith("fl-sim: the job aborted: client sim-00002 failed while joining")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ray_num_cpus": 2}, "ray_num_cpus: only with backend ray"),
        ({"ray_address": "auto"}, "ray_address: only with backend ray"),
        ({"backend": "ray", "workers": 0}, "workers: 0 (in this process) is for backend local"),
    ],
)
def test_backend_settings_that_do_not_fit_are_refused(tmp_path: Path, fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SimConfig(out=tmp_path, **fields)
