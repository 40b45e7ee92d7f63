"""Heartbeats: every interval while work runs, none after it, one thread for all rounds."""

from __future__ import annotations

import threading

from fedsilo.client.heartbeat import HeartbeatPacer

TIMEOUT = 10.0


def test_beats_come_while_the_work_runs_and_stop_with_it():
    pacer = HeartbeatPacer()
    beats: list[int] = []
    three = threading.Event()

    def beat() -> None:
        beats.append(1)
        if len(beats) == 3:
            three.set()

    with pacer.running(beat, 0.01):
        assert three.wait(TIMEOUT)  # the work lasts until three beats went out
    after = len(beats)
    with pacer.running(lambda: None, 0.01):  # the next work: the old beat is not called again
        pass
    assert len(beats) == after


def test_one_thread_serves_every_round_of_work():
    pacer = HeartbeatPacer()
    before = threading.active_count()
    for _ in range(20):
        ticked = threading.Event()
        with pacer.running(ticked.set, 0.001):
            assert ticked.wait(TIMEOUT)
    assert threading.active_count() == before + 1


def test_no_beat_goes_out_after_the_work_has_ended():
    pacer = HeartbeatPacer()
    in_beat, release = threading.Event(), threading.Event()
    ended: list[bool] = []
    late: list[bool] = []

    def slow_beat() -> None:
        late.append(bool(ended))
        in_beat.set()
        assert release.wait(TIMEOUT)

    def work() -> None:
        with pacer.running(slow_beat, 0.001):
            assert in_beat.wait(TIMEOUT)
        ended.append(True)  # only once the beat in flight has returned

    worker = threading.Thread(target=work)
    worker.start()
    assert in_beat.wait(TIMEOUT)
    assert not ended  # the work's end waits for the beat that is being sent
    release.set()
    worker.join(TIMEOUT)
    assert ended == [True] and late and not any(late)


def test_no_interval_means_no_beats_and_no_thread():
    pacer = HeartbeatPacer()
    before = threading.active_count()
    with pacer.running(lambda: (_ for _ in ()).throw(AssertionError("beat")), 0):
        pass
    assert threading.active_count() == before
