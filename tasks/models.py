"""Reference models of the federated-learning benchmarks, as plain ``nn.Module`` classes.

- ``CharLSTM``: LEAF's Shakespeare next-character model (Caldas et al. 2018,
  https://github.com/TalwalkarLab/leaf/blob/master/models/shakespeare/stacked_lstm.py).
- ``SimpleCNN``: NIID-Bench's ``simple-cnn`` for 28x28 images (``SimpleCNNMNIST`` in
  https://github.com/Xtra-Computing/NIID-Bench/blob/main/model.py).
- ``MLP`` and ``SoftmaxRegression`` for flat features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class CharLSTM(nn.Module):
    """Embed characters, run two stacked LSTMs, and predict the next character from the last."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 8,
        hidden_size: int = 256,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map (batch, sequence) character indices to (batch, vocab_size) logits."""
        outputs, _ = self.lstm(self.embedding(tokens))
        logits: torch.Tensor = self.head(outputs[:, -1])
        return logits


class SimpleCNN(nn.Module):
    """Two 5x5 convolutions (6 and 16 maps) with max-pooling, then 120 -> 84 -> classes."""

    def __init__(self, in_channels: int = 1, classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map (batch, channels, height, width) images to (batch, classes) logits."""
        logits: torch.Tensor = self.classifier(self.features(images))
        return logits


class MLP(nn.Module):
    """Flatten the input, then fully connected ReLU layers of ``hidden`` sizes, then logits."""

    def __init__(self, in_features: int, hidden: Sequence[int], classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Map (batch, ...) inputs to (batch, classes) logits."""
        logits: torch.Tensor = self.layers(inputs)
        return logits


class SoftmaxRegression(nn.Module):
    """Flatten the input and apply one linear layer (multinomial logistic regression)."""

    def __init__(self, in_features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Map (batch, ...) inputs to (batch, classes) logits."""
        logits: torch.Tensor = self.linear(inputs.flatten(1))
        return logits
