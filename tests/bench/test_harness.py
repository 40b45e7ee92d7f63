"""The harness: trials interleaved A, B, A, B; ratios taken within each repetition."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from bench.harness import Conditions, add_sim_arguments, interleave, ratios, run_sim, summary


def test_trials_run_interleaved_once_per_repetition_in_the_order_given() -> None:
    calls: list[str] = []

    def trial(name: str):
        def run() -> dict[str, float]:
            calls.append(name)
            return {"call": float(len(calls))}

        return run

    repetitions = interleave([("a", trial("a")), ("b", trial("b"))], 3)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    # each repetition holds the results of its own calls: a is call 1, 3, 5; b is 2, 4, 6
    assert [(r["a"]["call"], r["b"]["call"]) for r in repetitions] == [(1, 2), (3, 4), (5, 6)]


def test_progress_hears_every_result_as_it_comes() -> None:
    heard: list[tuple[int, str, int]] = []
    values = iter(range(10))
    interleave(
        [("a", lambda: next(values)), ("b", lambda: next(values))],
        2,
        progress=lambda rep, name, value: heard.append((rep, name, value)),
    )
    assert heard == [(0, "a", 0), (0, "b", 1), (1, "a", 2), (1, "b", 3)]


def test_a_drifting_load_cancels_out_of_per_repetition_ratios() -> None:
    # Fake timings on a box that slows down over the run: every trial takes its base time
    # times a drift that grows by 50 % per call. B always costs twice A at the same moment.
    clock = {"calls": 0}

    def timed(base: float):
        def run() -> dict[str, float]:
            drift = 1.5 ** clock["calls"]
            clock["calls"] += 1
            return {"seconds": base * drift}

        return run

    repetitions = interleave([("a", timed(1.0)), ("b", timed(2.0))], 4)
    ratio = ratios(repetitions, "b.seconds", "a.seconds")
    # b runs one call later than a: 2 x 1.5 = 3 in every repetition, whatever the drift
    assert ratio["values"] == pytest.approx([3.0] * 4)
    assert (ratio["median"], ratio["min"], ratio["max"]) == pytest.approx((3.0, 3.0, 3.0))


def test_ratio_statistics_are_of_the_ratio_itself_not_a_ratio_of_medians() -> None:
    repetitions = [
        {"fedsilo": {"gbps": 1.0}, "ceiling": {"gbps": 1.0}},
        {"fedsilo": {"gbps": 2.0}, "ceiling": {"gbps": 4.0}},
        {"fedsilo": {"gbps": 10.0}, "ceiling": {"gbps": 5.0}},
    ]
    ratio = ratios(repetitions, "fedsilo.gbps", "ceiling.gbps")
    assert ratio["values"] == [1.0, 0.5, 2.0]
    assert (ratio["median"], ratio["min"], ratio["max"]) == (1.0, 0.5, 2.0)
    assert ratio["of"] == "fedsilo.gbps / ceiling.gbps"
    # the ratio of the medians would say 2 / 4 = 0.5: not what any repetition measured
    assert summary([2.0, 1.0, 10.0])["median"] / summary([1.0, 4.0, 5.0])["median"] == 0.5


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="repeats"):
        interleave([("a", lambda: 1)], 0)
    with pytest.raises(ValueError, match="unique"):
        interleave([("a", lambda: 1), ("a", lambda: 2)], 1)
    with pytest.raises(ValueError, match=r"trial\.figure"):
        ratios([{"a": {"x": 1.0}}], "a", "a.x")


def test_conditions_note_the_cores_and_the_load_at_start_and_end() -> None:
    conditions = Conditions()
    assert conditions.cores == os.cpu_count()
    assert conditions.load_end is None
    conditions.end()
    saved = conditions.as_dict()
    assert saved["load_1min_start"] >= 0 and saved["load_1min_end"] >= 0
    assert f"{conditions.cores} cores" in saved["line"]
    assert f"{conditions.load_start:.2f} at the start" in saved["line"]
    assert f"{conditions.load_end:.2f} at the end" in saved["line"]


PROBE = "tests.sim.probe_task:ProbeTask"  # a tiny task; workers=0: no worker processes to start


def sim_args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser, rounds=7)
    return parser.parse_args(list(flags))


def test_run_sim_runs_the_job_with_the_benchmarks_flags_and_returns_its_rows(
    tmp_path: Path,
) -> None:
    assert sim_args().rounds == 7 and sim_args().clients == 10
    args = sim_args("--clients", "2", "--rounds", "2", "--threads", "1")
    rows, seconds = run_sim(args, "probe", tmp_path / "run", task=PROBE, workers=0)
    assert [row["round"] for row in rows] == [0, 1, 2]  # round 0: the initial model's evaluation
    assert all(sorted(row["participants"]) == [0, 1] for row in rows[1:])
    assert seconds > 0


def test_run_sim_exits_naming_the_variant_when_the_job_aborts(tmp_path: Path) -> None:
    args = sim_args("--clients", "2", "--rounds", "1", "--threads", "1")
    failing = {"fail": "load_data@1"}  # a client that cannot load its data stops the job
    with pytest.raises(SystemExit, match=r"^probe/none: the job aborted: "):
        run_sim(args, "probe/none", tmp_path / "run", task=PROBE, workers=0, task_options=failing)
