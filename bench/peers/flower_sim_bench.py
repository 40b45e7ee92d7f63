"""Flower 1.42's simulation engine (Ray backend) on fl-sim's workload, for bench/sim_bench.py.

    bench/.venv-flwr/bin/python bench/peers/flower_sim_bench.py --partitions P.npz
        --clients 100 --per-round 10 --rounds 6 --batch-size 32 --learning-rate 0.1
        --client-cpus 1 --threads 1 [--data /usr/share/datasets/fashion-mnist]

Runs in Flower's own venv, ``bench/.venv-flwr`` (git-ignored, the venv of
``flower_bench.py``), with ``flwr[simulation]==1.42.0`` (which brings its own Ray) and the same
torch as fedsilo, installed on first use by ``ensure_venv``; flwr and torch are imported only
inside ``run``. Everything the orchestrator (``sim_bench.py``, fedsilo's venv) needs from here
is standard library.

The workload is fl-sim's, step for step: NIID-Bench's simple-cnn (the same layers as
``fedsilo.tasks.models.SimpleCNN``), each client's split of Fashion-MNIST as fedsilo's
``fmnist`` task draws it (the orchestrator writes the index lists, ``P.npz``), and a client's
fit evaluates the model it received on its held-out split, then trains ``local_epochs`` of
plain SGD with cross-entropy, batches shuffled by a seeded generator, as
``fedsilo.tasks.training`` does. FedAvg samples ``per_round`` clients a round; there is no
federated or server-side evaluation.

One JSON line per round on stdout: from entering the strategy's ``configure_fit`` to leaving
its ``aggregate_fit``, the boundary of fl-sim's ``round_done.seconds``.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE.parent / ".venv-flwr"
FLWR = "flwr[simulation]==1.42.0"
TORCH = "torch==2.13.0"  # fedsilo's pin (Makefile)
STAMP = VENV / ".installed-flwr-simulation-1.42.0"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def ensure_venv() -> Path:
    """Create bench/.venv-flwr with Flower's simulation extra and torch unless there; return
    its python."""
    python = VENV / "bin" / "python"
    if STAMP.exists():
        return python
    if not python.exists():
        base = shutil.which("python3") or sys.executable
        print(f"creating {VENV} (once)", file=sys.stderr)
        subprocess.run([base, "-m", "venv", str(VENV)], check=True, timeout=300)
    print(f"installing {FLWR} and {TORCH} into {VENV} (once)", file=sys.stderr)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         FLWR, TORCH],
        check=True, timeout=1800,
    )  # fmt: skip
    STAMP.touch()
    return python


# ---------------------------------------------------------------------- in Flower's venv


@functools.lru_cache(maxsize=1)
def _images(folder: str) -> Any:
    """Fashion-MNIST's training images (n, 1, 28, 28) in [0, 1] and labels, once per process."""
    import numpy as np
    import torch

    def idx(name: str) -> Any:
        raw = gzip.decompress((Path(folder) / name).read_bytes())
        ndim = raw[3]
        shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)

    images = torch.from_numpy(idx("train-images-idx3-ubyte.gz").copy()).unsqueeze(1)
    labels = torch.from_numpy(idx("train-labels-idx1-ubyte.gz").astype("int64"))
    return images, labels


@functools.lru_cache(maxsize=1)
def _splits(path: str) -> dict[str, Any]:
    """Every client's index arrays, read once per process (never pickled: plain arrays)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _simple_cnn() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


def run(args: argparse.Namespace) -> None:  # noqa: C901 (Flower's classes, defined after flwr imports)
    """Run one Flower simulation; print a JSON line per round."""
    import torch
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch.nn import functional
    from torch.utils.data import DataLoader, TensorDataset

    class FmnistClient(NumPyClient):  # type: ignore[misc]
        """Evaluate the received model on the held-out split, then train on the local one."""

        def __init__(self, partition: int) -> None:
            self.created = time.time()
            if args.threads:
                torch.set_num_threads(args.threads)
            images, labels = _images(str(args.data))
            splits = _splits(str(args.partitions))
            train = torch.from_numpy(splits[f"train{partition}"])
            test = torch.from_numpy(splits[f"test{partition}"])
            self.train = TensorDataset(images[train].float() / 255.0, labels[train])
            self.test = TensorDataset(images[test].float() / 255.0, labels[test])
            self.partition = partition
            self.model = _simple_cnn()

        def _load(self, parameters: list[Any]) -> None:
            keys = self.model.state_dict().keys()
            state = {k: torch.from_numpy(v) for k, v in zip(keys, parameters, strict=True)}
            self.model.load_state_dict(state)

        def fit(self, parameters: list[Any], config: dict[str, Any]) -> Any:
            started = time.time()
            self._load(parameters)
            with torch.no_grad():
                self.model.eval()
                for inputs, batch in DataLoader(self.test, batch_size=1024):
                    logits = self.model(inputs)
                    float(functional.cross_entropy(logits, batch, reduction="sum"))
                    int((logits.argmax(dim=1) == batch).sum())
            seed = int(config["round"]) * 100_003 + self.partition
            loader = DataLoader(
                self.train,
                batch_size=args.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )
            optimizer = torch.optim.SGD(self.model.parameters(), lr=args.learning_rate)
            self.model.train()
            for _ in range(args.local_epochs):
                for inputs, batch in loader:
                    optimizer.zero_grad(set_to_none=True)
                    functional.cross_entropy(self.model(inputs), batch).backward()
                    optimizer.step()
            weights = [t.detach().numpy() for t in self.model.state_dict().values()]
            if args.trace is not None:  # where and when each fit ran, for the profile
                line = {"pid": os.getpid(), "partition": self.partition, "round": config["round"]}
                line |= {"created": self.created, "fit_started": started, "done": time.time()}
                with (args.trace / f"{os.getpid()}.jsonl").open("a") as out:
                    out.write(json.dumps(line) + "\n")
            return weights, len(self.train), {}

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        """FedAvg that prints when each round starts sending and finishes aggregating."""

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            self._started = time.time()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            aggregated = super().aggregate_fit(server_round, results, failures)
            line = {
                "round": server_round,
                "seconds": time.time() - self._started,
                "results": len(results),
                "failures": len(failures),
            }
            print(json.dumps(line), flush=True)
            return aggregated

    def server_fn(context: Context) -> ServerAppComponents:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            initial = [t.numpy() for t in _simple_cnn().state_dict().values()]
        strategy = TimedFedAvg(
            fraction_fit=args.per_round / args.clients,
            min_fit_clients=args.per_round,
            min_available_clients=args.clients,
            fraction_evaluate=0.0,
            min_evaluate_clients=0,
            accept_failures=False,
            on_fit_config_fn=lambda server_round: {"round": server_round},
            initial_parameters=ndarrays_to_parameters(initial),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    def client_fn(context: Context) -> Any:
        return FmnistClient(int(context.node_config["partition-id"])).to_client()

    resources: dict[str, Any] = {"num_cpus": args.client_cpus, "num_gpus": 0.0}
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=args.clients,
        backend_config={"client_resources": resources},
    )


def main() -> int:
    """Parse the flags and run (in Flower's venv)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=Path, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--per-round", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--client-cpus", type=float, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--data", type=Path, default=FMNIST)
    parser.add_argument("--trace", type=Path, help="folder: one JSON line per fit (pid, times)")
    run(parser.parse_args())
    return 0


if __name__ == "__main__":
    # Run as the module ``flower_sim_bench`` (this folder is on sys.path), not as __main__:
    # Ray pickles the client code by reference to its module, which each actor then imports.
    from flower_sim_bench import main as module_main

    sys.exit(module_main())
