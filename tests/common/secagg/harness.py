"""Secure-aggregation rounds in one process: real clients and server, messages handed over."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fedsilo.common.secagg import (
    AggregateResult,
    Identity,
    Quantizer,
    RoundSetup,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ThreatModel,
    Trust,
)
from fedsilo.common.secagg.masks import DEFAULT_CHUNK_WORDS

STAGES = (
    "before_advert",  # selected, never advertised keys
    "before_shares",  # advertised, never sent its shares (a dropout before key sharing)
    "before_upload",  # shared its keys, never uploaded
    "mid_upload",  # sent part of its upload, then broke off (its chunks replayed out)
    "after_upload",  # uploaded, gone before the unmask stage opened
    "during_unmask",  # uploaded, asked to unmask, never answered
)


def unsigned_config(**threat: float) -> SecAggConfig:
    return SecAggConfig(
        clip_norm=4.0, max_weight=1000, allow_unsigned=True, threat=ThreatModel(**threat)
    )


def seeded_entropy(seed: int) -> Callable[[int], bytes]:
    """A reproducible stand-in for os.urandom (SHA-256 in counter mode), for tests only."""
    counter = 0

    def entropy(size: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < size:
            out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
            counter += 1
        return out[:size]

    return entropy


@dataclass
class Drops:
    """Which clients vanish at which stage (see STAGES)."""

    at: dict[str, set[int]] = field(default_factory=dict)

    def alive(self, client: int, stage: str) -> bool:
        upto = STAGES[: STAGES.index(stage) + 1]
        return not any(client in self.at.get(name, set()) for name in upto)


def make_setup(
    n: int, length: int, round_number: int = 1, attempt: bytes = b"\x01" * 16
) -> RoundSetup:
    return RoundSetup(7, round_number, attempt, tuple(range(n)), length)


def make_inputs(
    n: int, length: int, seed: int = 0, scale: float = 0.01
) -> dict[int, tuple[NDArray[np.float32], int]]:
    rng = np.random.default_rng(seed)
    return {
        c: ((rng.standard_normal(length) * scale).astype(np.float32), int(rng.integers(1, 1000)))
        for c in range(n)
    }


def expected_words(
    quantizer: Quantizer, inputs: dict[int, tuple[NDArray[np.float32], int]], clients: list[int]
) -> NDArray[np.int64]:
    """The exact integer sum of the clients' quantized updates, computed without any mask."""
    total = np.zeros(len(next(iter(inputs.values()))[0]), dtype=np.int64)
    for c in clients:
        delta, weight = inputs[c]
        factor = quantizer.clip_factor(float(np.linalg.norm(delta.astype(np.float64))))
        total += quantizer.encode(delta, factor, weight).view(np.int32)
    return total


def make_clients(
    setup: RoundSetup,
    config: SecAggConfig,
    identities: dict[int, Identity] | None = None,
    trust: Trust | None = None,
    seed: int = 0,
) -> dict[int, SecAggClient]:
    return {
        c: SecAggClient(
            setup,
            c,
            config,
            identity=identities[c] if identities else None,
            trust=trust,
            entropy=seeded_entropy(seed * 1000 + c),
        )
        for c in setup.participants
    }


def run_round(
    setup: RoundSetup,
    config: SecAggConfig,
    inputs: dict[int, tuple[NDArray[np.float32], int]],
    *,
    drops: Drops | None = None,
    signing: tuple[dict[int, Identity], Trust] | None = None,
    chunk_words: int = DEFAULT_CHUNK_WORDS,
    seed: int = 0,
    uploads_seen: dict[int, bytes] | None = None,
) -> AggregateResult:
    """Run one attempt end to end; ``inputs`` maps client id to (delta, weight)."""
    drops = drops or Drops()
    identities, trust = signing if signing is not None else (None, None)
    server = SecAggServer(setup, config, trust=trust)
    clients = make_clients(setup, config, identities, trust, seed)
    _key_stages(server, clients, drops)
    for c, routed in server.close_shares().items():
        clients[c].receive_shares(routed)
        if drops.alive(c, "before_upload"):
            _upload(server, clients[c], inputs[c], drops, chunk_words, uploads_seen)
        else:
            server.drop(c)
    for c, request in server.close_uploads().items():
        if drops.alive(c, "during_unmask"):
            server.receive_unmask(clients[c].unmask(request))
        else:
            server.drop(c)
    return server.finish()


def share_all_keys(server: SecAggServer, clients: dict[int, SecAggClient]) -> None:
    """Run both key stages with every client alive and hand each its routed shares."""
    _key_stages(server, clients, Drops())
    for c, routed in server.close_shares().items():
        clients[c].receive_shares(routed)


def _key_stages(server: SecAggServer, clients: dict[int, SecAggClient], drops: Drops) -> None:
    for c, client in clients.items():
        advert = client.advertise()
        if drops.alive(c, "before_advert"):
            server.receive_advert(advert)
        else:
            server.drop(c)
    for c, roster in server.close_adverts().items():
        shares = clients[c].share_keys(roster)
        if drops.alive(c, "before_shares"):
            server.receive_shares(shares)
        else:
            server.drop(c)


def _upload(
    server: SecAggServer,
    client: SecAggClient,
    update: tuple[NDArray[np.float32], int],
    drops: Drops,
    chunk_words: int,
    uploads_seen: dict[int, bytes] | None,
) -> None:
    c = client.client_id
    delta, weight = update
    norm = float(np.linalg.norm(delta.astype(np.float64)))
    upload = server.begin_upload(c)
    sent = []
    chunks = client.masked_input([delta], norm=norm, weight=weight, chunk_words=chunk_words)
    for index, chunk in enumerate(chunks):
        if not drops.alive(c, "mid_upload") and index == 2:
            upload.abandon(replay=sent)  # the transport's copy of what it had added
            server.drop(c)
            return
        upload.add(chunk)
        sent.append(chunk)
    upload.finish()
    if uploads_seen is not None:
        uploads_seen[c] = b"".join(sent)
    if not drops.alive(c, "after_upload"):
        server.drop(c)
