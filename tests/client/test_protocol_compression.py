"""The client applies the codec InitConfig names, and refuses one it does not know."""

from __future__ import annotations

import pytest
import structlog
import torch

from fedsilo.client.protocol import ClientProtocol, LocalSettings
from fedsilo.common.compression import Compression, wire_specs
from fedsilo.common.errors import ConfigError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import specs_from_header, specs_of
from fedsilo.common.task_identity import TaskIdentity
from tests.wire_helpers import encode_state

TASK_OPTIONS = {"max_samples": 40}


def init_config(compression: pb.Compression, job_id: int = 1) -> pb.ServerMessage:
    identity = TaskIdentity.of("synthetic", TASK_OPTIONS)
    job = pb.JobConfig(
        job_id=job_id,
        task=identity.name,
        task_options_json=identity.options_json,
        task_hash=identity.hash,
        train=pb.TrainConfig(local_epochs=1, batch_size=8, learning_rate=0.5),
        seed=0,
        rounds=1,
        chunk_size=1 << 20,
        compression=compression,
    )
    return pb.ServerMessage(init_config=pb.InitConfig(client_id=0, job=job))


def started(sent: list[object]) -> ClientProtocol:
    protocol = ClientProtocol("org-a", None, LocalSettings(), structlog.get_logger())
    protocol.start_session(sent.append)
    return protocol


def frames(sent: list[object]) -> list[pb.ClientMessage]:
    """Flatten what the protocol sent into parsed client messages."""
    out: list[pb.ClientMessage] = []
    for item in sent:
        items = [item] if isinstance(item, (bytes, pb.ClientMessage)) else list(item)  # type: ignore[call-overload]
        for frame in items:
            raw = frame if isinstance(frame, bytes) else frame.SerializeToString()
            out.append(pb.ClientMessage.FromString(raw))
    return out


def test_unknown_codec_is_answered_with_an_error_and_stops_the_client() -> None:
    sent: list[object] = []
    protocol = started(sent)
    with pytest.raises(ConfigError, match="unknown codec 'zstd'") as raised:
        protocol.handle(init_config(pb.Compression(codec="zstd")))
    assert "\n" not in str(raised.value)
    (error,) = frames(sent)
    assert error.error.code == pb.UNSUPPORTED_CONFIG and "zstd" in error.error.message
    assert protocol.joined is None  # nothing was loaded


def run_one_round(protocol: ClientProtocol, sent: list[object]) -> list[pb.ClientMessage]:
    """Feed a SyncModel of the protocol's own model; return the upload's messages."""
    assert protocol.model is not None
    state = {k: v.clone() for k, v in protocol.model.state_dict().items()}
    header, chunks, checksum = encode_state(state)
    sent.clear()
    train = pb.TrainConfig(local_epochs=1, batch_size=8, learning_rate=0.5, seed=1)
    protocol.handle(pb.ServerMessage(sync_model=pb.SyncModel(round=1, train=train, model=header)))
    for chunk in chunks:
        protocol.handle(pb.ServerMessage(chunk=pb.TensorChunk(data=chunk)))
    protocol.handle(pb.ServerMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)))
    return frames(sent)


@pytest.mark.parametrize("name", ["none", "int8", "topk"])
def test_upload_header_is_the_wire_specs_of_the_negotiated_codec(name: str) -> None:
    sent: list[object] = []
    protocol = started(sent)
    setting = Compression(name, topk_fraction=0.1)
    protocol.handle(init_config(setting.to_proto()))
    assert protocol.model is not None
    model_specs = specs_of(protocol.model.state_dict())
    messages = run_one_round(protocol, sent)
    header = messages[0].send_model.update
    assert specs_from_header(header, 1 << 30) == wire_specs(model_specs, setting)
    # The stream ends with its trailer, or is inline in the SendModel when it fits in one chunk.
    assert messages[-1].HasField("trailer") or header.HasField("inline")


def test_a_new_job_gets_a_fresh_residual_and_a_reconnect_keeps_it() -> None:
    sent: list[object] = []
    protocol = started(sent)
    topk = Compression("topk", topk_fraction=0.1).to_proto()
    protocol.handle(init_config(topk))
    run_one_round(protocol, sent)
    assert protocol.joined is not None
    first = protocol.joined.compressor
    assert first is not None and first.residual
    residual = {k: v.clone() for k, v in first.residual.items()}

    protocol.start_session(sent.append)  # reconnect to the same job: same residual
    protocol.handle(init_config(topk))
    assert protocol.joined.compressor is first
    assert all(torch.equal(first.residual[k], v) for k, v in residual.items())

    protocol.start_session(sent.append)  # another job: a fresh one
    protocol.handle(init_config(topk, job_id=2))
    assert protocol.joined is not None
    assert protocol.joined.compressor is not first and protocol.joined.compressor is not None
    assert protocol.joined.compressor.residual == {}
