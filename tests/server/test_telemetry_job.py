"""The telemetry of a real job (sessions, intake, coordinator, recorder) run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.inprocess import JobRunner, ReceivedModel, ScriptedClient, echo

ROUNDS = 2


def bad_header(client: ScriptedClient, model: ReceivedModel) -> None:
    """Answer every round with an update that has a tensor too many; evaluate honestly."""
    if model.opening.HasField("sync_model"):
        client.send_update(model.round, {**model.tensors, "extra": torch.zeros(3)})
    else:
        echo(client, model)


def test_a_jobs_sessions_and_rounds_feed_its_metrics(tmp_path: Path) -> None:
    runner = JobRunner(tmp_path, rounds=ROUNDS, min_clients=1, start_clients=2, join_timeout=10)
    honest, liar = runner.client("honest"), runner.client("liar", bad_header)
    runner.start()
    honest.join()
    liar.join()
    outcome = runner.finish()
    assert outcome.finished

    text = generate_latest(runner.job.telemetry.registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("fedsilo_client_admissions_total", ())] == 2
    assert samples[("fedsilo_upload_refusals_total", (("reason", "header"),))] == ROUNDS
    drops = ("fedsilo_client_drops_total", (("phase", "upload"), ("reason", "update_refused")))
    assert samples[drops] == ROUNDS
    assert samples[("fedsilo_updates_aggregated_total", ())] == ROUNDS
    assert samples[("fedsilo_round_duration_seconds_count", ())] == ROUNDS
    assert samples[("fedsilo_protocol_errors_total", (("code", "BAD_TENSOR_STREAM"),))] == ROUNDS

    rows = [json.loads(line) for line in runner.job.metrics_log.path.read_text().splitlines()]
    mine = [c for r in rows for c in r.get("clients", []) if c["name"] == "honest"]
    assert len(mine) == ROUNDS
    down = samples[("fedsilo_client_bytes_total", (("client", "honest"), ("direction", "down")))]
    up = samples[("fedsilo_client_bytes_total", (("client", "honest"), ("direction", "up")))]
    # Down: every model stream (the rounds' and the final evaluation's); up: every message.
    assert down > sum(c["bytes_down"] for c in mine)
    assert up > sum(c["bytes_up"] for c in mine)
    assert runner.job.telemetry.transfers() == {}
