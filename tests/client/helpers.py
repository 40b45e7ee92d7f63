"""Driving a ClientProtocol by hand: server messages in, client messages out, no transport."""

from __future__ import annotations

import structlog
import torch

from fedsilo.client.audit import AuditLog
from fedsilo.client.protocol import ClientProtocol, LocalSettings
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.task_identity import TaskIdentity
from tests.wire_helpers import encode_state

TASK, OPTIONS = "synthetic", {"max_samples": 40}
TRAIN = pb.TrainConfig(local_epochs=1, batch_size=8, learning_rate=0.5, seed=1)


def init_message(chunk_size: int = 1 << 20, **job: object) -> pb.ServerMessage:
    """An InitConfig of the synthetic task that every default policy admits."""
    identity = TaskIdentity.of(TASK, OPTIONS)
    values: dict[str, object] = {
        "job_id": 1,
        "seed": 0,
        "rounds": 2,
        "chunk_size": chunk_size,
        "heartbeat_seconds": 0.0,
        "train": TRAIN,
        **job,
    }
    config = pb.JobConfig(
        task=TASK, task_options_json=identity.options_json, task_hash=identity.hash, **values
    )
    return pb.ServerMessage(init_config=pb.InitConfig(client_id=0, job=config))


class Driven:
    """A protocol and what it sent, parsed."""

    def __init__(self, audit: AuditLog | None = None) -> None:
        self.raw: list[object] = []
        self.protocol = ClientProtocol(
            "org-a", None, LocalSettings(), structlog.get_logger(), audit
        )
        self.protocol.start_session(self.raw.append)

    def sent(self) -> list[pb.ClientMessage]:
        """Everything sent so far, flattened into parsed messages."""
        out: list[pb.ClientMessage] = []
        for item in self.raw:
            frames = [item] if isinstance(item, (bytes, pb.ClientMessage)) else list(item)  # type: ignore[call-overload]
            for frame in frames:
                raw = frame if isinstance(frame, bytes) else frame.SerializeToString()
                out.append(pb.ClientMessage.FromString(raw))
        return out

    def take(self) -> list[pb.ClientMessage]:
        """What was sent since the last take."""
        out = self.sent()
        self.raw.clear()
        return out

    def model_stream(
        self, state: dict[str, torch.Tensor], chunk_size: int
    ) -> tuple[pb.TensorStreamHeader, list[bytes], int]:
        """Header, chunks and checksum of ``state``."""
        return encode_state(state, chunk_size)

    def own_state(self) -> dict[str, torch.Tensor]:
        """A copy of the client's model weights (what an honest server sends in round 1)."""
        assert self.protocol.model is not None
        return {k: v.clone() for k, v in self.protocol.model.state_dict().items()}
