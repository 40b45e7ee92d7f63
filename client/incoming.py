"""A model stream from the server, checked as the server checks a client's upload.

Before a byte is used, the header must describe exactly the local model (tensor count, names,
order, dtypes, shapes, and so the declared bytes: a header declaring 2^40 bytes or 10^6 tensors
is refused before anything is allocated). Chunks are decoded in place into the model's own
tensors, each at most the job's chunk size and never past the declared length; at the end the
checksum must match and every floating value must be finite. Any failure is a CodecError.
A round's stream of a job with control variates (SCAFFOLD) carries the server's variate after
the model (``common/control_variates.py``): checked the same way, decoded into fresh tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedsilo.client.control_variates import ControlVariateStore
from fedsilo.common import control_variates
from fedsilo.common.errors import CodecError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import check_specs_match, specs_from_header, specs_of
from fedsilo.common.tensor_checks import first_non_finite
from fedsilo.common.tensor_stream import TensorStreamDecoder


@dataclass
class IncomingModel:
    """A model being received: what it is for, and its decoder."""

    round: int
    train: pb.TrainConfig | None  # a round's training settings; None for the final evaluation
    decoder: TensorStreamDecoder
    # The wire names of the server's control variate in this stream (SCAFFOLD), and after
    # ``finish`` its tensors by model name (None: the stream carries none).
    control_names: tuple[str, ...] = ()
    control: dict[str, torch.Tensor] | None = None
    # Where ``finish`` hands the server's variate to: the client's store (``store.server``).
    store: ControlVariateStore | None = None

    @classmethod
    def begin(
        cls,
        model: torch.nn.Module,
        header: pb.TensorStreamHeader,
        chunk_size: int,
        round_number: int,
        train: pb.TrainConfig | None,
        control: ControlVariateStore | None = None,
    ) -> IncomingModel:
        """Check ``header`` against the local model (and, in a training round of a job with
        ``control`` variates, the server's) and prepare to decode into the model's tensors."""
        with_control = train is not None and control is not None
        state = model.state_dict()
        expected = specs_of(state)
        extras = control_variates.server_specs(expected) if with_control else []
        expected += extras
        specs = specs_from_header(
            header, sum(spec.nbytes for spec in expected), max_tensors=len(expected)
        )
        check_specs_match(specs, expected)
        into = _decodable(state)
        if into is not None and extras:
            into = {**into, **control_variates.zeros(extras)}
        decoder = TensorStreamDecoder(specs, into=into, max_chunk_size=chunk_size)
        names = tuple(spec.name for spec in extras)
        return cls(round_number, train, decoder, names, {} if with_control else None, control)

    def feed(self, data: bytes | memoryview) -> None:
        """Decode one chunk into place."""
        self.decoder.feed(data)

    def finish(self, model: torch.nn.Module, checksum: int) -> None:
        """Check length, checksum and finite values; leave the received weights in ``model``."""
        tensors = self.decoder.finish(checksum)
        bad = first_non_finite(tensors)
        if bad is not None:
            raise CodecError(f"tensor {bad[:100]!r} holds NaN or infinite values")
        if self.control is not None:
            received = {name: tensors[name] for name in self.control_names}
            self.control = control_variates.unsuffixed(received, control_variates.SERVER_SUFFIX)
            if self.store is not None:
                self.store.server = self.control
        names = set(self.control_names)
        _load_if_copied(model, {k: t for k, t in tensors.items() if k not in names})


def _decodable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Return the model's own tensors if chunks can be written into them in place."""
    if all(t.device.type == "cpu" and t.is_contiguous() for t in state.values()):
        return state
    return None


def _load_if_copied(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    state = model.state_dict()
    if any(state[name].data_ptr() != tensor.data_ptr() for name, tensor in tensors.items()):
        model.load_state_dict(tensors)
