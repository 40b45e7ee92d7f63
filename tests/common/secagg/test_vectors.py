"""A state dict as the summed vector: deltas out piece by piece, the mean written back in place."""

from __future__ import annotations

import numpy as np
import torch

from fedsilo.common.secagg import Quantizer, RoundSetup
from fedsilo.common.secagg.vectors import (
    delta_pieces,
    floating_names,
    l2_norm,
    vector_length,
    write_mean,
)
from tests.common.secagg.harness import run_round, unsigned_config


def _model_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 2)
    )
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_only_floating_tensors_take_part_in_state_dict_order() -> None:
    state = _model_state(0)
    names = floating_names(state)
    assert "1.num_batches_tracked" in state and "1.num_batches_tracked" not in names
    assert names == [n for n in state if n != "1.num_batches_tracked"]
    assert vector_length(state) == 5 * 7 + 7 + 4 * 7 + 7 * 2 + 2


def test_pieces_cover_the_delta_exactly_in_order() -> None:
    start, trained = _model_state(0), _model_state(1)
    pieces = list(delta_pieces(trained, start, piece=4))
    assert max(len(p) for p in pieces) == 4
    flat = np.concatenate(pieces)
    expected = np.concatenate(
        [
            (trained[n].double() - start[n].double()).reshape(-1).numpy()
            for n in floating_names(start)
        ]
    )
    assert np.array_equal(flat, expected)
    assert l2_norm(delta_pieces(trained, start, piece=3)) == np.linalg.norm(expected)


def test_secure_fedavg_of_three_models_matches_plain_fedavg_within_the_bound() -> None:
    start = _model_state(0)
    trained = {c: _model_state(10 + c) for c in range(3)}
    weights = {0: 30, 1: 10, 2: 60}
    config = unsigned_config()  # clip norm 4: deltas of these small models may be clipped
    inputs = {}
    for c in range(3):
        delta = np.concatenate(list(delta_pieces(trained[c], start)))
        inputs[c] = (delta, weights[c])
    length = vector_length(start)
    setup = RoundSetup(1, 1, b"\x03" * 16, (0, 1, 2), length)
    result = run_round(setup, config, inputs)
    out = {name: tensor.clone() for name, tensor in start.items()}
    write_mean(result.mean_chunks(chunk_words=10), start, out)

    quantizer = Quantizer.for_round(config, 3)
    plain = {name: start[name].double().clone() for name in floating_names(start)}
    for c in range(3):
        factor = quantizer.clip_factor(l2_norm(delta_pieces(trained[c], start)))
        for name in plain:
            delta = (trained[c][name].double() - start[name].double()) * factor
            plain[name] += delta * weights[c] / 100
    for name, expected in plain.items():
        # float32 storage of the result adds its own rounding on top of the stated bound.
        tolerance = result.error_bound() + 1e-6 * float(expected.abs().max())
        assert torch.allclose(out[name].double(), expected, atol=tolerance, rtol=0), name
    assert torch.equal(out["1.num_batches_tracked"], start["1.num_batches_tracked"])
