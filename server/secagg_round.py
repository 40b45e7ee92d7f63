"""A round's secure aggregation on the server: the protocol, its stages' messages, masked uploads.

The protocol itself is ``fedsilo.common.secagg`` (transport-free); this module carries it over
the job's sessions. The coordinator closes each stage when nobody it waits for is left (or at
its deadline) and sends what the stage produced; masked uploads stream into the running sum as
their chunks arrive (integer sums commute: no turn to wait for), and a copy of each goes to a
tee file so that an upload broken midway can be subtracted again. Guarded by the job's
condition, except the sinks' chunk additions, which the protocol object locks itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from fedsilo.common.errors import CodecError, SecAggRefusedError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.secagg import RoundSetup, SecAggConfig, SecAggServer, ServerStage, Trust
from fedsilo.common.secagg import wire as secagg_wire
from fedsilo.common.secagg.messages import ATTEMPT_BYTES
from fedsilo.common.secagg.result import in_ranges
from fedsilo.common.secagg.server import unmask_threads
from fedsilo.common.secagg.vectors import vector_length, write_mean_at
from fedsilo.common.specs import TensorSpec
from fedsilo.server import messages
from fedsilo.server.allocator import SCRATCH_BYTES
from fedsilo.server.config import ServerConfig
from fedsilo.server.dp_round import dp_settings

MASKED_NAME = "secagg.masked"
WORD_BYTES = 4
TEE_SLICE = 16 << 20


def secagg_config(config: ServerConfig) -> SecAggConfig | None:
    """The job's secure-aggregation settings, or None when it runs without."""
    if not config.secure_aggregation:
        return None
    dp = dp_settings(config)  # distributed DP-FedAvg: clients clip to C and add noise shares
    clip_norm = dp.clip_norm if dp is not None else config.secagg_clip_norm
    assert clip_norm is not None  # the job spec requires one
    max_weight = 1 if config.weighting == "uniform" else config.secagg_max_weight
    assert max_weight is not None
    return SecAggConfig.model_validate(
        {
            "clip_norm": clip_norm,
            "max_weight": max_weight,
            "allow_unsigned": config.tls is None,  # plaintext: no certificates to sign keys
            "noise_std": dp.client_noise_std if dp is not None else 0.0,
        }
    )


def masked_spec(global_state: Mapping[str, torch.Tensor]) -> TensorSpec:
    """The one tensor a masked upload carries: the model's float values, then the weight."""
    return TensorSpec(MASKED_NAME, torch.uint32, (vector_length(global_state) + 1,))


class SecAggRound:
    """One round's secure aggregation: stages, routing, and the running masked sum."""

    def __init__(
        self,
        *,
        job_id: int,
        round_number: int,
        participants: list[int],
        global_state: Mapping[str, torch.Tensor],
        config: SecAggConfig,
        trust: Trust | None,
        tee_dir: Path,
    ) -> None:
        self.setup = RoundSetup(
            job_id=job_id,
            round=round_number,
            attempt=os.urandom(ATTEMPT_BYTES),  # a round run again never reuses keys or masks
            participants=tuple(sorted(participants)),
            length=vector_length(global_state),
        )
        self.server = SecAggServer(self.setup, config, trust=trust)
        self.spec = masked_spec(global_state)
        self._tee_dir = tee_dir
        self._sinks: dict[int, MaskedSink] = {}
        self.result: Any = None

    @property
    def stage(self) -> ServerStage:
        """Where the protocol stands."""
        return self.server.stage

    def waiting(self) -> frozenset[int]:
        """The clients the current stage still waits for."""
        return self.server.waiting_for()

    def setup_message(self) -> pb.SecAggSetup:
        """The setup every selected client gets in its SyncModel."""
        return secagg_wire.setup_message(self.setup)

    def receive(self, client_id: int, event: str, payload: Any) -> None:
        """Take one client's stage message (raises SecAggRefusedError: the client leaves)."""
        if event == "secagg_advert":
            advert = secagg_wire.advert_of(payload)
            _check_sender(client_id, advert.client_id)
            self.server.receive_advert(advert)
        elif event == "secagg_shares":
            shares = secagg_wire.shares_of(payload)
            _check_sender(client_id, shares.sender)
            self.server.receive_shares(shares)
        else:
            response = secagg_wire.response_of(payload)
            _check_sender(client_id, response.sender)
            self.server.receive_unmask(response)

    def drop(self, client_id: int) -> None:
        """Take a client out from now on; an upload it broke off is subtracted first."""
        sink = self._sinks.pop(client_id, None)
        if sink is not None:
            sink.discard()
        self.server.drop(client_id)

    def close(self) -> dict[int, pb.ServerMessage]:
        """Close the current key stage; return what each client is sent next."""
        if self.stage is ServerStage.ADVERTISE:
            rosters = self.server.close_adverts()
            return {cid: messages.secagg_roster(roster) for cid, roster in rosters.items()}
        if self.stage is ServerStage.SHARE:
            routed = self.server.close_shares()
            return {cid: messages.secagg_routed(shares) for cid, shares in routed.items()}
        requests = self.server.close_uploads()
        return {cid: messages.secagg_unmask_request(request) for cid, request in requests.items()}

    def sink(self, client_id: int) -> MaskedSink:
        """The tensor-stream sink of one client's masked upload."""
        self._tee_dir.mkdir(parents=True, exist_ok=True)
        path = self._tee_dir / f"r{self.setup.round}-c{client_id}.masked"
        sink = MaskedSink(self.server.begin_upload(client_id), path)
        self._sinks[client_id] = sink
        return sink

    def finish(self) -> None:
        """Remove the masks: the sum of the survivors' quantized updates and weights."""
        self.result = self.server.finish()

    def mean_state(
        self,
        global_state: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The survivors' weighted mean update as a model: ``g + mean delta`` (floats only).

        Written into ``out`` (model-shaped, e.g. a recycled model: pages already mapped) or
        new tensors; ranges of the vector on the unmasking's threads (elementwise: the same
        values whatever the split). Every floating element is written: nothing is copied first.
        """
        if out is None:
            out = {name: torch.empty_like(t) for name, t in global_state.items()}
        for name, tensor in global_state.items():
            if not torch.is_floating_point(tensor):
                out[name].copy_(tensor)
        chunk_words = SCRATCH_BYTES // 8  # float64 pieces below the server's mmap threshold

        def one(begin: int, end: int) -> None:
            chunks = self.result.mean_chunks(chunk_words, begin, end)
            if write_mean_at(chunks, global_state, out, begin) != end:
                raise SecAggRefusedError("the mean does not cover the model")

        in_ranges(self.setup.length, unmask_threads(), one)
        return dict(out)


def _check_sender(client_id: int, claimed: int) -> None:
    if claimed != client_id:
        raise SecAggRefusedError(f"client {client_id} sent a message as client {claimed}")


class MaskedSink:
    """A masked upload's sink: whole words into the running sum, a copy into a tee file."""

    spills = False

    def __init__(self, upload: Any, tee_path: Path) -> None:
        # The reader thread writes; the job's thread may discard (a dropped client): one at a
        # time, so that the tee always holds exactly what the sum holds.
        self._lock = threading.Lock()
        self._upload = upload
        self._tee_path = tee_path
        self._tee = open(tee_path, "xb", buffering=0)  # noqa: SIM115 - closed by result/discard
        self._carry = b""

    def write(self, index: int, offset: int, data: memoryview) -> None:
        """Add the words this chunk completes (a word cut by a chunk waits for the next)."""
        joined = self._carry + bytes(data) if self._carry else data
        whole = len(joined) - len(joined) % WORD_BYTES
        words = joined[:whole]
        self._carry = bytes(joined[whole:])
        if not whole:
            return
        with self._lock:
            try:
                self._upload.add(words)
            except SecAggRefusedError as exc:
                raise CodecError(str(exc)) from exc
            view = memoryview(words)
            while view:
                view = view[self._tee.write(view) or 0 :]

    def result(self) -> Mapping[str, torch.Tensor]:
        """Close the upload (all words in); nothing is handed over."""
        try:
            if self._carry:
                raise SecAggRefusedError("the masked upload ends inside a word")
            self._upload.finish()
        except SecAggRefusedError as exc:
            self.discard()
            raise CodecError(str(exc)) from exc
        with self._lock:
            self._close_tee()
        return {}

    def discard(self) -> None:
        """Take what was added back out of the sum (from the tee), and forget the tee."""
        with self._lock:
            if self._tee.closed and not self._tee_path.exists():
                return
            self._tee.close()
            self._upload.abandon(replay=self._replay())
            self._tee_path.unlink(missing_ok=True)

    def _replay(self) -> Iterator[bytes]:
        with open(self._tee_path, "rb") as handle:
            while chunk := handle.read(TEE_SLICE):
                yield chunk

    def _close_tee(self) -> None:
        self._tee.close()
        self._tee_path.unlink(missing_ok=True)  # unwritten dirty pages are simply dropped
