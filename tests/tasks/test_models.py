"""The reference models have the benchmarks' output shapes and parameter counts."""

from __future__ import annotations

import torch

from fedsilo.tasks.models import MLP, CharLSTM, SimpleCNN, SoftmaxRegression


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_char_lstm_predicts_one_character_from_a_sequence():
    model = CharLSTM(vocab_size=81)
    logits = model(torch.randint(0, 81, (3, 80)))
    assert logits.shape == (3, 81)
    # embedding 81x8; two LSTM layers of 256 (PyTorch keeps two bias vectors); dense 256 -> 81
    lstm = 4 * 256 * (8 + 256) + 2 * 4 * 256 + 4 * 256 * (256 + 256) + 2 * 4 * 256
    assert parameters(model) == 81 * 8 + lstm + 256 * 81 + 81 == 820_185


def test_simple_cnn_matches_niid_bench_for_28x28_images():
    model = SimpleCNN()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    conv = (6 * 25 + 6) + (16 * 6 * 25 + 16)
    dense = (16 * 4 * 4 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert parameters(model) == conv + dense == 44_426


def test_simple_cnn_adapts_to_channels_and_image_size():
    model = SimpleCNN(in_channels=3, classes=5, image_size=32)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def test_mlp_has_the_configured_hidden_layers():
    model = MLP(64, [32, 16], 10)
    assert model(torch.zeros(4, 8, 8)).shape == (4, 10)
    assert parameters(model) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    assert parameters(MLP(64, [], 10)) == 64 * 10 + 10


def test_softmax_regression_is_one_linear_layer_over_flattened_input():
    model = SoftmaxRegression(28 * 28, 10)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert parameters(model) == 28 * 28 * 10 + 10
