"""The client keeps its update for the masked upload: the delta in place, its norm taken early."""

from __future__ import annotations

import math

import torch

from fedsilo.client.secagg_client import PIECE, MaskedRound
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.secagg import SecAggClient
from tests.common.secagg.harness import make_setup, unsigned_config


def _round(length: int) -> MaskedRound:
    config = unsigned_config()
    protocol = SecAggClient(make_setup(3, length), 0, config, identity=None, trust=None)
    return MaskedRound(1, protocol)


def test_the_kept_delta_is_trained_minus_received_in_the_received_buffers() -> None:
    torch.manual_seed(0)
    received = {"w": torch.randn(2 * PIECE + 17), "steps": torch.tensor(3)}
    trained = {"w": received["w"] + torch.randn(2 * PIECE + 17) * 1e-3, "steps": torch.tensor(4)}
    trained["w"][:100] = received["w"][:100]  # unchanged elements: a delta of zero
    expected = trained["w"] - received["w"]
    buffer = received["w"]
    masked = _round(2 * PIECE + 17)
    masked.keep(trained, received, examples=5, send=pb.SendModel())
    assert masked.delta is not None and set(masked.delta) == {"w"}
    assert masked.delta["w"].data_ptr() == buffer.data_ptr()  # no model-sized copy
    assert torch.equal(masked.delta["w"], expected)
    assert not masked.delta["w"][:100].any()
    # the float64 norm, summed per piece of PIECE elements (the order the upload relies on)
    wide = expected.double()
    pieces = [wide[i : i + PIECE] for i in range(0, wide.numel(), PIECE)]
    assert masked.norm == math.sqrt(sum(float(torch.dot(p, p)) for p in pieces))
    assert masked.weight == 5 and masked.norm > 0
