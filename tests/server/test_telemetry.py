"""/metrics, family by family: each counts what it says, in the job's own registry."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fedsilo.common.errors import CodecError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import TensorSpec, check_specs_match
from fedsilo.common.tensor_stream import TensorStreamDecoder
from fedsilo.server.checkpoint import CHECKPOINT_FILE
from fedsilo.server.job import SPILL_DIR
from fedsilo.server.report_checks import check_local_metrics
from fedsilo.server.state_machine import JobPhase
from fedsilo.server.status import StatusView
from fedsilo.server.status_metrics import register_state_metrics
from fedsilo.server.telemetry import JobTelemetry, drop_reason
from fedsilo.server.upload import UploadRefusedError
from fedsilo.server.validation import bound_update, check_finite, check_magnitude
from tests.server.status_helpers import config, evaluated, federation, model_stream, row

# Prometheus naming: snake_case with the fedsilo_ prefix; a unit suffix where there is a unit.
NAME = re.compile(r"^fedsilo_[a-z][a-z0-9_]*$")


def scrape(telemetry: JobTelemetry) -> dict[str, list[Sample]]:
    """Parse the registry's exposition the way Prometheus does; samples by family."""
    text = generate_latest(telemetry.registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def families(telemetry: JobTelemetry) -> dict[str, tuple[str, str]]:
    text = generate_latest(telemetry.registry).decode()
    return {f.name: (f.type, f.documentation) for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called ``name`` with exactly these labels (``le`` aside)."""
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found} in {samples}"
    return found[0]


@pytest.fixture
def view(tmp_path: Path) -> StatusView:
    fed = federation(tmp_path)
    status_view = StatusView(config(tmp_path), fed.state, fed.telemetry)
    register_state_metrics(status_view)
    return status_view


def refused(error: Exception, late: bool = False, wrong: bool = False) -> UploadRefusedError:
    code = pb.WRONG_ROUND if late or wrong else pb.BAD_TENSOR_STREAM
    return UploadRefusedError(int(code), str(error), leaves_round=True, tell_client=not late)


def raised(call, kind: type[Exception] = CodecError) -> Exception:  # type: ignore[no-untyped-def]
    with pytest.raises(kind) as info:
        call()
    return info.value


def test_at_least_twenty_families_each_with_help_and_conventional_names(view) -> None:
    found = families(view.telemetry)
    ours = {name: kind for name, (kind, _) in found.items() if name.startswith("fedsilo_")}
    assert len(ours) >= 20, sorted(ours)
    assert all(doc.strip() for _, doc in found.values()), "a family without help text"
    for name, kind in ours.items():
        assert NAME.match(name), name
        if kind == "counter":
            assert not name.endswith("_total"), f"{name}: the parser strips _total of counters"
    samples = scrape(view.telemetry)
    counters = [n for n, kind in ours.items() if kind == "counter"]
    assert counters and all(s.name.endswith("_total") for n in counters for s in samples[n]), (
        "counter samples end in _total"
    )
    units = {
        "fedsilo_round_duration_seconds",
        "fedsilo_spill_bytes",
        "fedsilo_client_throughput_bytes_per_second",
        "fedsilo_eval_accuracy_ratio",
    }
    assert units <= set(ours)
    assert "process_resident_memory_bytes" in found


def test_phase_is_one_for_the_current_phase_only(view) -> None:
    samples = scrape(view.telemetry)["fedsilo_job_phase"]
    assert {s.labels["phase"]: s.value for s in samples} == {
        phase.value: 1.0 if phase is JobPhase.ROUND else 0.0 for phase in JobPhase
    }


def test_rounds_and_the_round_in_progress(view) -> None:
    samples = scrape(view.telemetry)
    assert value(samples["fedsilo_rounds_completed"], "fedsilo_rounds_completed_total") == 1
    assert value(samples["fedsilo_job_rounds"], "fedsilo_job_rounds") == 5
    assert value(samples["fedsilo_round_number"], "fedsilo_round_number") == 2
    assert value(samples["fedsilo_round_selected_clients"], "fedsilo_round_selected_clients") == 5
    outstanding = samples["fedsilo_round_outstanding_clients"]
    assert value(outstanding, "fedsilo_round_outstanding_clients") == 3
    assert value(samples["fedsilo_round_dropped_clients"], "fedsilo_round_dropped_clients") == 1
    assert value(samples["fedsilo_round_elapsed_seconds"], "fedsilo_round_elapsed_seconds") >= 0
    info = samples["fedsilo_job_info"]
    assert value(info, "fedsilo_job_info", job="3", task="synthetic") == 1


def test_clients_connected_ready_known_and_by_stage(view) -> None:
    samples = scrape(view.telemetry)
    assert value(samples["fedsilo_clients_connected"], "fedsilo_clients_connected") == 5
    assert value(samples["fedsilo_clients_ready"], "fedsilo_clients_ready") == 1
    assert value(samples["fedsilo_clients_known"], "fedsilo_clients_known") == 7
    stages = {s.labels["stage"]: s.value for s in samples["fedsilo_clients_in_stage"]}
    assert stages == {
        "joined": 1,
        "idle": 1,
        "download": 1,
        "training": 1,
        "upload": 1,
        "queued": 0,
        "evaluating": 0,
        "discarding": 0,
        "secagg_wait": 0,
        "secagg_unmask": 0,
    }
    silent = samples["fedsilo_client_last_progress_seconds"]
    assert value(silent, "fedsilo_client_last_progress_seconds", client="org-train") == 0.25


def test_transfer_progress_per_client_and_direction(view) -> None:
    samples = scrape(view.telemetry)["fedsilo_client_transfer_progress_ratio"]
    name = "fedsilo_client_transfer_progress_ratio"
    assert value(samples, name, client="org-down", direction="down") == 3 / 12
    assert value(samples, name, client="org-up", direction="up") == 0.25
    assert len(samples) == 2


def test_bytes_and_throughput_per_client_and_direction() -> None:
    telemetry = JobTelemetry(10)
    telemetry.admitted(0, "org-a")
    stream = model_stream()
    telemetry.download_started(0, stream)
    for _ in range(12):
        telemetry.frame_sent(0)
    telemetry.download_finished(0)
    telemetry.upload_started(0, 1000)
    telemetry.received(0, 600)
    telemetry.received(0, 400)
    telemetry.upload_finished(0)
    telemetry.received(None, 50)  # before a Hello was admitted: no client to count it for
    samples = scrape(telemetry)
    sent = samples["fedsilo_client_bytes"]
    assert value(sent, "fedsilo_client_bytes_total", client="org-a", direction="down") == (
        stream.nbytes
    )
    assert value(sent, "fedsilo_client_bytes_total", client="org-a", direction="up") == 1000
    speed = samples["fedsilo_client_throughput_bytes_per_second"]
    name = "fedsilo_client_throughput_bytes_per_second"
    assert value(speed, name, client="org-a", direction="down") > 0
    assert value(speed, name, client="org-a", direction="up") > 0
    assert telemetry.transfers() == {}


def test_round_durations_drops_updates_and_examples_come_from_the_rows() -> None:
    telemetry = JobTelemetry(1 << 20)
    drops = [
        {"client_id": 1, "reason": "disconnected", "phase": "training"},
        {"client_id": 2, "reason": "stalled: no progress for 30s", "phase": "upload"},
    ]
    telemetry.round_done(row(1, 0.3, drops))
    telemetry.round_done(
        row(2, 4.0, [{"client_id": 1, "reason": "disconnected", "phase": "training"}])
    )
    samples = scrape(telemetry)
    histogram = samples["fedsilo_round_duration_seconds"]
    name = "fedsilo_round_duration_seconds"
    assert value(histogram, f"{name}_count") == 2
    assert value(histogram, f"{name}_sum") == pytest.approx(4.3)
    le = {s.labels["le"]: s.value for s in histogram if s.name == f"{name}_bucket"}
    assert (le["0.25"], le["0.5"], le["2.5"], le["5.0"]) == (0, 1, 1, 2)
    dropped = samples["fedsilo_client_drops"]
    total = "fedsilo_client_drops_total"
    assert value(dropped, total, reason="disconnected", phase="training") == 2
    assert value(dropped, total, reason="stalled", phase="upload") == 1
    assert value(samples["fedsilo_updates_aggregated"], "fedsilo_updates_aggregated_total") == 4
    assert value(samples["fedsilo_train_examples"], "fedsilo_train_examples_total") == 320
    assert value(samples["fedsilo_train_loss"], "fedsilo_train_loss") == 0.25


def test_evaluation_gauges_follow_the_newest_evaluated_model() -> None:
    telemetry = JobTelemetry(1 << 20)
    telemetry.row_written(evaluated(row(1, 1.0), loss=0.4, accuracy=0.8))
    telemetry.row_written(evaluated(row(2, 1.0), loss=0.3, accuracy=0.9))
    samples = scrape(telemetry)
    assert value(samples["fedsilo_eval_loss"], "fedsilo_eval_loss") == 0.3
    assert value(samples["fedsilo_eval_accuracy_ratio"], "fedsilo_eval_accuracy_ratio") == 0.9


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("disconnected", "disconnected"),
        ("stalled: no progress for 30s", "stalled"),
        ("no update within round_timeout=300s", "round_timeout"),
        ("update refused: checksum mismatch: the tensor stream was corrupted", "update_refused"),
        ("replaced by a new connection", "replaced"),
        ("something new", "other"),
    ],
)
def test_drop_reasons_are_a_few_words(reason: str, label: str) -> None:
    assert drop_reason(reason) == label


def test_upload_refusals_by_reason_from_the_checks_own_errors() -> None:
    spec = TensorSpec("w", torch.float32, (2,))
    decoder = TensorStreamDecoder([spec])
    decoder.feed(torch.ones(2).numpy().tobytes())
    errors = {
        "checksum": raised(lambda: decoder.finish(12345)),
        "not_finite": raised(lambda: check_finite({"w": torch.tensor([float("nan")])})),
        "norm_bound": raised(
            lambda: bound_update({"w": torch.full((2,), 10.0)}, {"w": torch.zeros(2)}, 1, "refuse")
        ),
        "header": raised(lambda: check_specs_match([spec], [TensorSpec("v", torch.float32, (2,))])),
        "metrics": raised(
            lambda: check_local_metrics(pb.LocalMetrics(train_loss=float("nan")), 100), ValueError
        ),
        "too_big": raised(lambda: check_magnitude({"w": torch.tensor([1e30])}, 1e6)),
    }
    telemetry = JobTelemetry(1 << 20)
    for error in errors.values():
        telemetry.upload_refused(0, refused(error), late=False)
    telemetry.upload_refused(0, refused(CodecError("round 3 is already closed"), late=True), True)
    telemetry.upload_refused(0, refused(CodecError("update for round 9"), wrong=True), False)
    samples = scrape(telemetry)["fedsilo_upload_refusals"]
    counts = {s.labels["reason"]: s.value for s in samples}
    assert counts == {
        "checksum": 1,
        "metrics": 1,
        "not_finite": 2,  # a NaN, and a value beyond the magnitude bound
        "norm_bound": 1,
        "header": 1,
        "late": 1,
        "wrong_round": 1,
    }


def test_errors_and_admissions_are_counted_by_code() -> None:
    telemetry = JobTelemetry(1 << 20)
    telemetry.admitted(0, "org-a")
    telemetry.admitted(0, "org-a")  # a reconnection
    telemetry.protocol_error(int(pb.WRONG_ROUND))
    telemetry.protocol_error(int(pb.WRONG_ROUND))
    telemetry.peer_error(int(pb.INTERNAL))
    samples = scrape(telemetry)
    admissions = samples["fedsilo_client_admissions"]
    assert value(admissions, "fedsilo_client_admissions_total") == 2
    sent = samples["fedsilo_protocol_errors"]
    assert value(sent, "fedsilo_protocol_errors_total", code="WRONG_ROUND") == 2
    told = samples["fedsilo_client_reported_errors"]
    assert value(told, "fedsilo_client_reported_errors_total", code="INTERNAL") == 1


def test_checkpoint_age_and_spill_bytes_come_from_the_run_folder(view, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert "fedsilo_checkpoint_age_seconds" not in scrape(view.telemetry)  # none written yet
    run.mkdir(parents=True, exist_ok=True)
    checkpoint = run / CHECKPOINT_FILE
    checkpoint.write_bytes(b"x" * 123)
    written = time.time() - 30
    os.utime(checkpoint, (written, written))
    (run / SPILL_DIR).mkdir()
    (run / SPILL_DIR / "r2-c1-0.upload").write_bytes(b"a" * 1000)
    (run / SPILL_DIR / "r2-c2-1.upload").write_bytes(b"b" * 24)
    (run / SPILL_DIR / "unrelated.txt").write_bytes(b"c" * 5)
    samples = scrape(view.telemetry)
    age = value(samples["fedsilo_checkpoint_age_seconds"], "fedsilo_checkpoint_age_seconds")
    assert 29.5 <= age < 60
    assert value(samples["fedsilo_checkpoint_size_bytes"], "fedsilo_checkpoint_size_bytes") == 123
    assert value(samples["fedsilo_spill_bytes"], "fedsilo_spill_bytes") == 1024
    assert value(samples["fedsilo_spill_files"], "fedsilo_spill_files") == 2


def test_process_memory_is_reported(view) -> None:
    samples = scrape(view.telemetry)
    rss = value(samples["process_resident_memory_bytes"], "process_resident_memory_bytes")
    assert rss > 10 << 20  # a Python process with torch loaded


def test_uptime_and_start_time(view) -> None:
    samples = scrape(view.telemetry)
    started = value(samples["fedsilo_job_start_time_seconds"], "fedsilo_job_start_time_seconds")
    assert abs(started - time.time()) < 600
    assert value(samples["fedsilo_job_uptime_seconds"], "fedsilo_job_uptime_seconds") >= 0


def test_every_job_counts_in_its_own_registry() -> None:
    one, two = JobTelemetry(1 << 20), JobTelemetry(1 << 20)
    one.round_done(row(1, 1.0))
    assert value(scrape(one)["fedsilo_updates_aggregated"], "fedsilo_updates_aggregated_total") == 2
    assert value(scrape(two)["fedsilo_updates_aggregated"], "fedsilo_updates_aggregated_total") == 0
    global_names = [m.name for m in REGISTRY.collect()]
    assert not [name for name in global_names if name.startswith("fedsilo_")]
