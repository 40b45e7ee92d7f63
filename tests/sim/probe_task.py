"""A tiny task for fl-sim's backend tests, loaded as ``tests.sim.probe_task:ProbeTask``.

On demand, clients fail: ``fail="train@1 die@2"`` makes partition 1 raise in training and
partition 2 kill the process hosting it with SIGKILL while it trains (as the kernel's OOM
killer would), both in their ``at_round``-th round; ``load_data@P`` raises in load_data.

With ``record`` (a folder), every client writes ``<pid> <start> <end>`` of each training to
``record/<partition>-<round>`` after ``sleep`` seconds of pretended work, so that a test can
see which process trained it, and when.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.tasks import Evaluation, LocalData, TrainConfig, TrainResult
from fedsilo.tasks.training import evaluate_classifier, train_classifier

FAILURES = ("load_data", "train", "die")


class ProbeTask:
    """Logistic regression on a separable blob per partition; some partitions may fail."""

    def __init__(
        self,
        fail: str = "",
        at_round: int = 1,
        record: str = "",
        sleep: float = 0.0,
    ) -> None:
        self.fail: dict[int, str] = {}
        for entry in fail.split():
            kind, _, partition = entry.partition("@")
            if kind not in FAILURES or not partition.isdigit():
                raise ValueError(f"fail: {entry!r} is not KIND@PARTITION, KIND one of {FAILURES}")
            self.fail[int(partition)] = kind
        self.at_round = int(at_round)
        self.record = Path(record) if record else None
        self.sleep = float(sleep)
        self._partition = -1  # each client loads its own instance of the task
        self._rounds = 0

    def build_model(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.nn.Linear(8, 2)

    def load_data(self, partition: int, seed: int, data_dir: Path | None) -> LocalData:
        if self.fail.get(partition) == "load_data":
            raise FileNotFoundError(f"no data for partition {partition} in /nowhere")
        generator = torch.Generator().manual_seed(seed * 1000 + partition)
        x = torch.randn(60, 8, generator=generator)
        y = (x[:, 0] > 0).long()
        self._partition = partition
        return LocalData(train=TensorDataset(x[:48], y[:48]), test=TensorDataset(x[48:], y[48:]))

    def train(self, model: torch.nn.Module, data: LocalData, config: TrainConfig) -> TrainResult:
        self._rounds += 1
        if self._rounds == self.at_round:
            if self.fail.get(self._partition) == "train":
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (16x8 and 9x2)")
            if self.fail.get(self._partition) == "die":
                os.kill(os.getpid(), signal.SIGKILL)
        started = time.time()
        if self.sleep:
            time.sleep(self.sleep)  # pretended work: overlaps only if clients run in parallel
        result = train_classifier(model, data.train, config)
        if self.record is not None:
            line = f"{os.getpid()} {started} {time.time()}\n"
            (self.record / f"{self._partition}-{self._rounds}").write_text(line)
        return result

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Evaluation:
        return evaluate_classifier(model, data.test)
