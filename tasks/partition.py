"""Split any labelled dataset among clients: IID, label skew, quantity skew, natural groups.

Each partitioner takes sample counts or a label list (never a dataset) and returns one list of
sample indices per client, drawn only from its ``seed`` (a ``numpy.random.Generator``). The
skewed ones follow NIID-Bench (Li et al. 2022, "Federated Learning on Non-IID Data Silos: An
Experimental Study", section 4; https://github.com/Xtra-Computing/NIID-Bench).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from fedsilo.common.errors import ConfigError

Labels = Sequence[int] | np.ndarray | torch.Tensor
GroupKey = TypeVar("GroupKey", str, int)

# Resampling Dirichlet draws until every client is large enough stops after this many tries.
MAX_DRAWS = 1000


def _check_clients(n_samples: int, clients: int) -> None:
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    if n_samples < clients:
        raise ValueError(f"{n_samples} samples cannot give {clients} clients one each")


def _as_labels(labels: Labels) -> np.ndarray:
    array = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    return array


def _to_lists(parts: Sequence[np.ndarray]) -> list[list[int]]:
    return [[int(i) for i in part] for part in parts]


def iid(n_samples: int, clients: int, seed: int) -> list[list[int]]:
    """Shuffle the samples and deal them into ``clients`` parts whose sizes differ by at most 1."""
    _check_clients(n_samples, clients)
    order = np.random.default_rng(seed).permutation(n_samples)
    return _to_lists(np.array_split(order, clients))


def dirichlet_label_skew(
    labels: Labels, clients: int, beta: float, seed: int, min_size: int = 10
) -> list[list[int]]:
    """Give each class to clients in proportions drawn from Dir(beta), redrawing small clients.

    As NIID-Bench's ``noniid-labeldir``: a client already holding its fair share (n / clients)
    gets no more of later classes, and the whole draw is repeated until every client has at
    least ``min_size`` samples.
    """
    array = _as_labels(labels)
    n_samples = len(array)
    _check_clients(n_samples, clients)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if min_size * clients > n_samples:
        raise ValueError(f"{n_samples} samples cannot give {clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(array == label) for label in np.unique(array)]
    for _ in range(MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for class_members in by_class:
            members = rng.permutation(class_members)
            proportions = rng.dirichlet(np.full(clients, beta))
            open_clients = np.array([len(part) < n_samples / clients for part in parts])
            proportions = proportions * open_clients
            if proportions.sum() <= 0:  # every open client drew ~0: split among them evenly
                proportions = open_clients.astype(float)
            proportions = proportions / proportions.sum()
            cuts = (np.cumsum(proportions) * len(members)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(int(i) for i in chunk)
        if min(len(part) for part in parts) >= min_size:
            return [[int(i) for i in rng.permutation(part)] for part in parts]
    raise ValueError(
        f"no Dir({beta}) draw in {MAX_DRAWS} gave all {clients} clients {min_size} samples"
    )


def label_count_skew(
    labels: Labels, clients: int, labels_per_client: int, seed: int
) -> list[list[int]]:
    """Give each client ``labels_per_client`` classes (#C=k) and split each class among holders.

    As NIID-Bench's ``noniid-#label``: client i always holds class i mod K plus k - 1 others
    drawn at random; the samples of a class no client holds are left out.
    """
    array = _as_labels(labels)
    _check_clients(len(array), clients)
    classes = np.unique(array)
    if not 1 <= labels_per_client <= len(classes):
        raise ValueError(f"labels_per_client must be in 1..{len(classes)}, got {labels_per_client}")
    rng = np.random.default_rng(seed)
    held: list[list[int]] = []
    for client in range(clients):
        own = client % len(classes)
        others = rng.permutation(np.delete(np.arange(len(classes)), own))
        held.append([own, *(int(c) for c in others[: labels_per_client - 1])])
    parts: list[list[int]] = [[] for _ in range(clients)]
    for position, label in enumerate(classes):
        holders = [client for client in range(clients) if position in held[client]]
        if not holders:
            continue
        members = rng.permutation(np.flatnonzero(array == label))
        for client, chunk in zip(holders, np.array_split(members, len(holders)), strict=True):
            parts[client].extend(int(i) for i in chunk)
    return [[int(i) for i in rng.permutation(part)] for part in parts]


def quantity_skew(
    n_samples: int, clients: int, beta: float, seed: int, min_size: int = 10
) -> list[list[int]]:
    """Shuffle the samples and cut them in sizes drawn from Dir(beta), redrawing tiny clients."""
    _check_clients(n_samples, clients)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if min_size * clients > n_samples:
        raise ValueError(f"{n_samples} samples cannot give {clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_samples)
    for _ in range(MAX_DRAWS):
        proportions = rng.dirichlet(np.full(clients, beta))
        cuts = (np.cumsum(proportions) * n_samples).astype(int)[:-1]
        parts = np.split(order, cuts)
        if min(len(part) for part in parts) >= min_size:
            return _to_lists(parts)
    raise ValueError(
        f"no Dir({beta}) draw in {MAX_DRAWS} gave all {clients} clients {min_size} samples"
    )


def natural(groups: Sequence[GroupKey]) -> list[list[int]]:
    """Make one client per distinct group key (a role, a user), in sorted key order."""
    members: dict[GroupKey, list[int]] = {}
    for index, key in enumerate(groups):
        members.setdefault(key, []).append(index)
    return [members[key] for key in sorted(members)]


def whole_number(value: float | str, name: str) -> int:
    """Return ``value`` as an int; JSON task options carry whole numbers as floats."""
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


@dataclass(frozen=True)
class LabelPartition:
    """How a task splits its labelled samples among ``clients``: a scheme and its parameter.

    ``dirichlet`` (label skew, Dir(beta), beta 0.5 as NIID-Bench's default), ``iid``, or
    ``labels`` (#C=k: ``labels_per_client`` classes each, default 2).
    """

    clients: int
    scheme: str = "dirichlet"
    beta: float | None = None
    labels_per_client: int | None = None

    @classmethod
    def from_options(
        cls,
        clients: float,
        scheme: str,
        beta: float | None,
        labels_per_client: float | None,
    ) -> LabelPartition:
        """Validate task options and fill in the defaults of the chosen scheme."""
        count = whole_number(clients, "clients")
        if count < 1:
            raise ValueError(f"clients must be >= 1, got {count}")
        if scheme not in ("dirichlet", "iid", "labels"):
            raise ValueError(f"partition must be 'dirichlet', 'iid' or 'labels', got {scheme!r}")
        if beta is not None and scheme != "dirichlet":
            raise ValueError("beta applies only to partition='dirichlet'")
        if labels_per_client is not None and scheme != "labels":
            raise ValueError("labels applies only to partition='labels'")
        if scheme == "dirichlet":
            beta = 0.5 if beta is None else float(beta)
            if beta <= 0:
                raise ValueError(f"beta must be > 0, got {beta}")
        k = None
        if scheme == "labels":
            k = 2 if labels_per_client is None else whole_number(labels_per_client, "labels")
        return cls(clients=count, scheme=scheme, beta=beta, labels_per_client=k)

    def split(self, labels: Labels, seed: int) -> list[list[int]]:
        """Return every client's sample indices, drawn from ``seed``."""
        if self.scheme == "dirichlet":
            assert self.beta is not None
            return dirichlet_label_skew(labels, self.clients, self.beta, seed)
        if self.scheme == "labels":
            assert self.labels_per_client is not None
            return label_count_skew(labels, self.clients, self.labels_per_client, seed)
        return iid(len(labels), self.clients, seed)

    def client_split(
        self, labels: Labels, partition: int, seed: int, train_fraction: float = 0.8
    ) -> tuple[list[int], list[int]]:
        """Return (train, test) indices of client ``partition``: its first 80 % and the rest."""
        if not 0 <= partition < self.clients:
            raise ConfigError(
                f"partition {partition} is out of range: the task has {self.clients} clients"
            )
        indices = self.split(labels, seed)[partition]
        cut = int(len(indices) * train_fraction)
        return indices[:cut], indices[cut:]
