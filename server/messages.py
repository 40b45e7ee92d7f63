"""Every protobuf message the server builds, in one place; the rest of the server speaks domain.

Builders only: no state, no I/O. The session and the coordinator call these to turn what the
job decided into what crosses the wire.
"""

from __future__ import annotations

from typing import cast

from fedsilo.common.compression import Compression
from fedsilo.common.errors import ProtocolError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.secagg import SecAggConfig
from fedsilo.common.secagg import wire as secagg_wire
from fedsilo.common.secagg.messages import KeyRoster, RoutedShares, UnmaskRequest
from fedsilo.common.seeding import derive_seed
from fedsilo.common.specs import TensorSpec, header_of
from fedsilo.common.task_identity import TaskIdentity
from fedsilo.common.wire import ModelFrames, serialize
from fedsilo.server import metrics
from fedsilo.server.config import ServerConfig


def job_config(
    config: ServerConfig, compression: Compression, secagg: SecAggConfig | None = None
) -> pb.JobConfig:
    """Return the JobConfig every client gets in its InitConfig."""
    # The task's identity as clients check it against their own policy (docs/protocol.md).
    identity = TaskIdentity.of(config.task, config.task_options)
    return pb.JobConfig(
        job_id=config.job_id,
        task=identity.name,
        task_options_json=identity.options_json,
        task_hash=identity.hash,
        train=_train(config, seed=0),
        seed=config.seed,
        rounds=config.rounds,
        chunk_size=config.chunk_size,
        heartbeat_seconds=config.progress_timeout / 4,
        progress_timeout_seconds=config.progress_timeout,
        compression=compression.to_proto(),
        require_dp=config.require_dp,
        # SCAFFOLD's rounds carry control variates both ways (docs/protocol.md).
        control_variates=config.strategy == "scaffold",
        secure_aggregation=secagg_wire.settings_message(secagg) if secagg is not None else None,
    )


def upload_ack(round_number: int, offset: int) -> pb.ServerMessage:
    """Return the acknowledgement of the first ``offset`` bytes of a round's upload."""
    position = pb.StreamPosition(round=round_number, offset=offset)
    return pb.ServerMessage(upload_ack=position)


def init_config(
    client_id: int, job: pb.JobConfig, resume_upload: pb.StreamPosition | None = None
) -> pb.ServerMessage:
    """Return the InitConfig answering an admitted client's Hello (and where its upload goes on)."""
    init = pb.InitConfig(client_id=client_id, job=job)
    if resume_upload is not None:
        init.resume_upload.CopyFrom(resume_upload)
    return pb.ServerMessage(init_config=init)


def train_config(config: ServerConfig, round_number: int, client_id: int) -> pb.TrainConfig:
    """Return one client's training settings for one round (its seed derives from both)."""
    return _train(config, derive_seed(config.seed, "train", round_number, client_id))


def _train(config: ServerConfig, seed: int) -> pb.TrainConfig:
    """Return the job's local training settings with ``seed``."""
    return pb.TrainConfig(
        local_epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=seed,
        proximal_mu=config.proximal_mu,
        optimizer=config.optimizer,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def model_header(specs: list[TensorSpec], frames: ModelFrames) -> pb.TensorStreamHeader:
    """Return the header of a model stream; a model that fits in one chunk travels inline."""
    header = header_of(specs)
    if frames.inline is not None:
        header.inline.CopyFrom(frames.inline)
    return header


def sync_opening(
    round_number: int,
    train: pb.TrainConfig,
    header: pb.TensorStreamHeader,
    secagg: pb.SecAggSetup | None = None,
    resume_offset: int | None = None,
) -> bytes:
    """Return the serialized SyncModel that opens a round's model stream (or continues it)."""
    sync = pb.SyncModel(round=round_number, train=train, model=header)
    if secagg is not None:
        sync.secagg.CopyFrom(secagg)
    if resume_offset is not None:
        sync.resume_offset = resume_offset
    return serialize(pb.ServerMessage(sync_model=sync))


def evaluate_opening(round_number: int, header: pb.TensorStreamHeader) -> bytes:
    """Return the serialized Evaluate that opens the final model's stream."""
    return serialize(pb.ServerMessage(evaluate=pb.Evaluate(round=round_number, model=header)))


def trailer(checksum: int) -> pb.ServerMessage:
    """Return the trailer that ends a model stream."""
    return pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=checksum))


def inline_trailer(checksum: int) -> pb.TensorStreamTrailer:
    """Return the trailer an inline update implies (its checksum travels in its header)."""
    return pb.TensorStreamTrailer(checksum=checksum)


def stream_position(round_number: int, offset: int) -> pb.StreamPosition:
    """Return where a reconnecting client's upload goes on."""
    return pb.StreamPosition(round=round_number, offset=offset)


def secagg_roster(roster: KeyRoster) -> pb.ServerMessage:
    """Return a client's roster of its neighbours' keys (secure aggregation's first close)."""
    return pb.ServerMessage(secagg_roster=secagg_wire.roster_message(roster))


def secagg_routed(shares: RoutedShares) -> pb.ServerMessage:
    """Return the key shares routed to one client (secure aggregation's second close)."""
    return pb.ServerMessage(secagg_routed=secagg_wire.routed_message(shares))


def secagg_unmask_request(request: UnmaskRequest) -> pb.ServerMessage:
    """Return what a survivor is asked to reveal (secure aggregation's last close)."""
    return pb.ServerMessage(secagg_unmask_request=secagg_wire.request_message(request))


def error(code: int, message: str) -> pb.ServerMessage:
    """Return an Error message."""
    return pb.ServerMessage(error=pb.Error(code=cast("pb.ErrorCode", code), message=message))


def code_name(code: int) -> str:
    """Return an ErrorCode's name, or the number for one this server does not know."""
    try:
        return pb.ErrorCode.Name(code)
    except ValueError:
        return str(code)


def finish(rounds_completed: int) -> pb.ServerMessage:
    """Return the Finish every client gets when the job ends well."""
    return pb.ServerMessage(finish=pb.Finish(rounds_completed=rounds_completed))


def abort(reason: str, retry: bool) -> pb.ServerMessage:
    """Return the Abort every client gets when the job ends early (retry: it may resume)."""
    return pb.ServerMessage(abort=pb.Abort(reason=reason, retry=retry))


def record_dp_fields(ready: pb.Ready, required: bool) -> dict[str, float | None]:
    """Return a Ready's record-level DP-SGD for the log; ProtocolError if required and absent."""
    if not ready.HasField("record_dp"):
        if required:
            raise ProtocolError(
                int(pb.NOT_ADMITTED),
                "this job requires record-level DP-SGD (--require-dp); the client's Ready "
                "declares none",
            )
        return {"record_dp_epsilon": None, "record_dp_noise": None}
    dp = ready.record_dp
    return {"record_dp_epsilon": dp.target_epsilon, "record_dp_noise": dp.noise_multiplier}


def dp_epsilon(local: pb.LocalMetrics) -> float | None:
    """Return the record-level epsilon a client reported with its update, if any."""
    return local.dp_epsilon if local.HasField("dp_epsilon") else None


def client_evaluation(client_id: int, evaluation: pb.Evaluation) -> metrics.ClientEvaluation:
    """Turn a client's Evaluation message into the metrics module's record."""
    return metrics.ClientEvaluation(
        client_id=client_id,
        examples=evaluation.examples,
        loss=evaluation.loss,
        accuracy=evaluation.accuracy,
        metrics={name: evaluation.metrics[name] for name in sorted(evaluation.metrics)},
    )
