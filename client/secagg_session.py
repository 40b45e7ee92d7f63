"""A client's secure aggregation across the rounds of a job: the settings it accepted, the round
in progress, the ledger of unmask answers. ``client/protocol.py`` calls it from its table's
actions; every refusal is a SecAggRefusedError (or PolicyError when joining) it turns into one
Error and one line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from fedsilo.client.joined import Joined
from fedsilo.client.secagg_client import MaskedRound, SecAggKeys, accepted_config
from fedsilo.client.work import Upload
from fedsilo.common.errors import SecAggRefusedError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.secagg import SecAggConfig, UnmaskLedger


class ClientSecAgg:
    """Secure aggregation's state of one client over one job."""

    def __init__(self) -> None:
        self.config: SecAggConfig | None = None
        self._setup: pb.SecAggSetup | None = None
        self._round: MaskedRound | None = None
        self._upload: Upload | None = None
        # One per client per job: a round number is answered again only with the same survivors.
        self._ledger = UnmaskLedger()

    @property
    def enabled(self) -> bool:
        """Whether the joined job sums masked updates."""
        return self.config is not None

    @property
    def in_round(self) -> bool:
        """Whether a masked round is in progress."""
        return self._round is not None

    def accept_job(self, job: pb.JobConfig, keys: SecAggKeys | None) -> None:
        """Take the job's settings, if this client can take part as they ask (PolicyError)."""
        self.config = None
        if job.HasField("secure_aggregation"):
            self.config = accepted_config(job.secure_aggregation, keys)

    def expect_round(self, sync: pb.SyncModel) -> None:
        """Remember the setup of the round whose model is arriving."""
        self._setup = sync.secagg if self.enabled else None

    def begin(self, round_number: int, joined: Joined, keys: SecAggKeys | None) -> pb.ClientMessage:
        """Make this round's keys; return the advert to send before training."""
        setup = self._setup
        assert self.config is not None and setup is not None
        if setup.round != round_number:
            raise SecAggRefusedError(f"the setup is for round {setup.round}, not {round_number}")
        self._round = MaskedRound.begin(
            setup, joined.job, joined.client_id, self.config, keys, self._ledger
        )
        return self._round.advert()

    def keep(self, upload: Upload, model: torch.nn.Module) -> None:
        """Keep the trained update for the masked upload, once the neighbours' shares are in."""
        masked = self._require()
        assert upload.reference is not None and isinstance(upload.frames, pb.ClientMessage)
        masked.keep(model.state_dict(), upload.reference, upload.examples, upload.frames.send_model)
        self._upload = upload

    def shares(self, roster: pb.SecAggKeyRoster) -> pb.ClientMessage:
        """The encrypted shares for this round's neighbours."""
        return self._require().shares(roster)

    def upload(
        self, routed: pb.SecAggRoutedShares, chunk_size: int
    ) -> tuple[Iterator[bytes], dict[str, Any], dict[str, Any]]:
        """The masked upload's frames, its audit record and its log fields."""
        masked, upload = self._require(), self._upload
        if upload is None:
            raise SecAggRefusedError("shares arrived before this client's update was ready")
        frames = masked.masked_upload(routed, chunk_size)
        record = {**upload.record, "masked_weight": masked.weight}
        return frames, record, {"round": masked.round, **upload.summary}

    def unmask(self, request: pb.SecAggUnmaskRequest) -> pb.ClientMessage:
        """The shares the unmask stage asks for; the round ends here."""
        try:
            return self._require().unmask(request)
        finally:
            self.end_round()

    def end_round(self) -> None:
        """Forget the round (answered, or refused)."""
        self._round = None
        self._upload = None

    def _require(self) -> MaskedRound:
        if self._round is None:
            raise SecAggRefusedError("no masked round is in progress")
        return self._round


def unmask_record(request: pb.SecAggUnmaskRequest) -> dict[str, Any]:
    """What the audit log keeps of an unmask answer: whose shares were revealed, of which kind."""
    return {
        "self_mask_of": list(request.self_mask_of),
        "mask_key_of": list(request.mask_key_of),
    }
