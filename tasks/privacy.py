"""Differential privacy on the client: DP-SGD through Opacus, and DP-FedAvg's noise share.

Record-level DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133) for a user's own
training loop::

    from fedsilo.tasks.interface import DpSgdConfig
    from fedsilo.tasks.privacy import make_private

    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    loader = DataLoader(data.train, batch_size=config.batch_size)
    with make_private(model, optimizer, loader, config.privacy) as private:
        for _ in range(config.local_epochs):
            for inputs, labels in private.loader:     # Poisson-sampled batches (may be empty)
                private.optimizer.zero_grad()
                loss = cross_entropy(model(inputs), labels, reduction="sum") / max(len(labels), 1)
                loss.backward()
                private.optimizer.step()              # clip per sample, add noise, step
    return TrainResult(examples=..., loss=..., steps=private.steps, privacy=private.report())

The model is never wrapped (Opacus' ``wrap_model=False``): it keeps its class and its
state_dict keys, and leaving the ``with`` block removes every hook and attribute Opacus added.
``fedsilo.tasks.training.train_classifier`` does exactly this when ``TrainConfig.privacy`` is set.

Randomness. Opacus' ``secure_mode`` needs torchcsprng, which has no build for current torch, so
it is off. Instead, by default (``DpSgdConfig.seed=None``) both the Poisson sampler and the noise
come from torch generators seeded with 63 bits from ``secrets`` (``os.urandom``): the coordinator
cannot predict either. Not covered: torch's generators are not cryptographic PRNGs, and the
floating-point attacks on Gaussian sampling that secure_mode mitigates (Mironov 2012; Jin et al.
2022, https://arxiv.org/abs/2112.05307) are not mitigated. With an explicit seed, a round on the
CPU is bit-for-bit reproducible (tested); on CUDA the noise comes from a CUDA generator (other
numbers than the CPU's) and per-sample gradient kernels may not be deterministic.

Organisation-level DP-FedAvg in distributed mode: each client clips its update's delta and adds
its share of the noise before secure aggregation (``add_distributed_noise_``); the server's side
is ``fedsilo.server.privacy``. Opacus is imported only when DP-SGD is used (it costs seconds).
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from fedsilo.common.seeding import SEED_BITS, derive_seed
from fedsilo.tasks.interface import DpSgdConfig, DpSgdReport

__all__ = [
    "DpSgdConfig",
    "DpSgdReport",
    "PrivateTraining",
    "add_distributed_noise_",
    "add_gaussian_noise_",
    "clip_delta_",
    "make_private",
    "noise_generator",
    "secret_seed",
]

# Noise is drawn a block at a time: a model-sized temporary would double a big model's memory.
NOISE_BLOCK = 1 << 22

# Opacus warns that secure_mode is off (we seed from os.urandom instead, see above), and torch
# that a full backward hook fires on a first layer whose input needs no gradient: both expected.
warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


def secret_seed() -> int:
    """Return a seed no one else can predict (63 bits from ``secrets``, i.e. os.urandom)."""
    return secrets.randbits(SEED_BITS)


def noise_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """Return a generator on ``device`` seeded with ``seed``, or secretly when ``seed`` is None."""
    generator = torch.Generator(device=device)
    generator.manual_seed(secret_seed() if seed is None else seed)
    return generator


@dataclass
class PrivateTraining:
    """What a DP-SGD loop uses: the model (unwrapped), Opacus' optimizer, loader and accountant.

    ``optimizer`` is an ``opacus.optimizers.DPOptimizer``; ``loader`` an
    ``opacus.data_loader.DPDataLoader`` (Poisson sampling: each record joins each batch with
    probability ``sample_rate``, so batch sizes vary and a batch may be empty); ``accountant``
    an ``opacus.accountants.RDPAccountant`` holding this round's steps.
    """

    model: torch.nn.Module
    optimizer: Any
    loader: DataLoader[Any]
    accountant: Any
    config: DpSgdConfig
    sample_rate: float
    hooks: Any

    @property
    def steps(self) -> int:
        """Return the number of noisy optimizer steps taken so far."""
        return sum(int(steps) for _, _, steps in self.accountant.history)

    def report(self) -> DpSgdReport:
        """Return what this round's DP-SGD did, for the client's PrivacyBudget.

        Noise and sampling rate come from the accountant's history (what the optimizer really
        used); ValueError if they changed during the round.
        """
        kinds = {(float(z), float(q)) for z, q, _ in self.accountant.history}
        if len(kinds) > 1:
            raise ValueError(f"noise or sampling rate changed during the round: {sorted(kinds)}")
        noise, rate = kinds.pop() if kinds else (self.config.noise_multiplier, self.sample_rate)
        return DpSgdReport(
            noise_multiplier=noise,
            max_grad_norm=self.config.max_grad_norm,
            sample_rate=rate,
            steps=self.steps,
        )

    def close(self) -> None:
        """Remove Opacus' hooks and the attributes it added to the model's parameters."""
        self.hooks.cleanup()
        for parameter in self.model.parameters():
            if hasattr(parameter, "summed_grad"):
                del parameter.summed_grad
            parameter.grad = None


def _check_compatible(model: torch.nn.Module) -> None:
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = "; ".join(str(error).split(". ")[0] for error in errors)
        raise ValueError(f"the model cannot be trained with DP-SGD: {reasons}")


def _sampling_loader(loader: DataLoader[Any], generator: torch.Generator) -> DataLoader[Any]:
    """Return ``loader`` with ``generator`` as its own: Opacus draws Poisson batches from it."""
    if loader.batch_size is None or loader.drop_last:
        raise ValueError("DP-SGD needs a DataLoader with a batch_size and drop_last=False")
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
    )


def _open_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[Any],
    config: DpSgdConfig,
) -> PrivateTraining:
    from opacus import PrivacyEngine

    model.train()  # Opacus refuses a model in eval mode (the client evaluates before training)
    _check_compatible(model)
    device = next(model.parameters()).device
    sampling_seed = None if config.seed is None else derive_seed(config.seed, "dp-sgd-sampling")
    noise_seed = None if config.seed is None else derive_seed(config.seed, "dp-sgd-noise")
    source = _sampling_loader(loader, noise_generator(sampling_seed))  # the sampler runs on CPU
    engine = PrivacyEngine(accountant="rdp")
    hooks, dp_optimizer, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=source,
        noise_multiplier=config.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_generator(noise_seed, device),
        wrap_model=False,
    )
    return PrivateTraining(
        model=model,
        optimizer=dp_optimizer,
        loader=dp_loader,
        accountant=engine.accountant,
        config=config,
        sample_rate=1 / len(dp_loader),  # Opacus' own choice (int(1 / (1 / len(source))) steps)
        hooks=hooks,
    )


@contextmanager
def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[Any],
    config: DpSgdConfig,
) -> Iterator[PrivateTraining]:
    """Make one round of training DP-SGD with Opacus; restore the plain model on exit.

    Poisson sampling with rate about ``1 / len(loader)`` (the loader's batch size in
    expectation; exactly ``plan_round``'s), per-sample gradients clipped to
    ``config.max_grad_norm``, Gaussian noise of standard deviation ``noise_multiplier *
    max_grad_norm`` on their sum. ``optimizer`` must hold the model's parameters; ``loader``
    gives its dataset, batch size and workers (its sampler and generator are replaced). The
    model is put in training mode. Raises ValueError for a model Opacus cannot train
    (BatchNorm, nn.LSTM: use GroupNorm and opacus.layers.DPLSTM in the Task's model instead).
    """
    private = _open_private(model, optimizer, loader, config)
    try:
        yield private
    finally:
        private.close()


def _floating(tensors: Mapping[str, torch.Tensor]) -> Iterator[torch.Tensor]:
    for tensor in tensors.values():
        if tensor.is_floating_point():
            yield tensor


def add_gaussian_noise_(
    tensors: MutableMapping[str, torch.Tensor], std: float, generator: torch.Generator
) -> None:
    """Add N(0, std^2) to every element of every floating tensor, in place, in mapping order.

    Noise is drawn on ``generator``'s device in blocks of NOISE_BLOCK elements, in float64 for
    float64 tensors and float32 otherwise, then cast: the same generator state gives the same
    noise whatever the tensors' device. Integer tensors are left alone (never noised).
    """
    if not std >= 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    for tensor in _floating(tensors):
        if not tensor.is_contiguous():
            raise ValueError("add_gaussian_noise_ needs contiguous tensors")
        flat = tensor.view(-1)
        dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        for start in range(0, flat.numel(), NOISE_BLOCK):
            block = flat[start : start + NOISE_BLOCK]
            noise = torch.randn(
                block.numel(), generator=generator, dtype=dtype, device=generator.device
            )
            block.add_((noise * std).to(device=block.device, dtype=block.dtype))


def delta_norm(delta: Mapping[str, torch.Tensor]) -> float:
    """Return the L2 norm of all floating tensors of ``delta`` together (in float64)."""
    total = sum(float(t.double().pow(2).sum()) for t in _floating(delta))
    return math.sqrt(total)


def clip_delta_(delta: MutableMapping[str, torch.Tensor], bound: float) -> float:
    """Scale ``delta`` in place to L2 norm at most ``bound``; return its norm before."""
    if not bound > 0:
        raise ValueError(f"clipping bound must be > 0, got {bound}")
    norm = delta_norm(delta)
    if norm > bound:
        for tensor in _floating(delta):
            tensor.mul_(bound / norm)
    return norm


def add_distributed_noise_(
    delta: MutableMapping[str, torch.Tensor],
    clip_norm: float,
    noise_multiplier: float,
    clients: int,
    generator: torch.Generator,
) -> float:
    """Clip ``delta`` to ``clip_norm`` and add this client's share of DP-FedAvg's noise.

    The share has standard deviation ``noise_multiplier * clip_norm / sqrt(clients)``, so the
    sum of ``clients`` shares (secure aggregation reveals only that sum) carries the noise
    ``noise_multiplier * clip_norm`` of central DP-FedAvg. ``generator`` must be secret from the
    server (``noise_generator(None)``). Returns the delta's norm before clipping.
    """
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    norm = clip_delta_(delta, clip_norm)
    add_gaussian_noise_(delta, noise_multiplier * clip_norm / math.sqrt(clients), generator)
    return norm
