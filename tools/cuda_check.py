"""Check the CUDA path of local training on a GPU machine (run by hand there; CI has no GPU).

    python tools/cuda_check.py OUT_DIR

For the synthetic and digits tasks it simulates the same small federation with
``--device cpu`` and ``--device cuda`` and compares the final models (they agree up to float
rounding, not bit for bit: GPU kernels sum in other orders); it also trains LEAF's char-LSTM
for a few steps on the GPU. Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedsilo.common.devices import resolve_device
from fedsilo.sim.app import simulate
from fedsilo.sim.config import SimConfig
from fedsilo.tasks import TrainConfig
from fedsilo.tasks.models import CharLSTM
from fedsilo.tasks.training import evaluate_classifier, train_classifier


def run(task: str, device: str, out: Path) -> tuple[dict[str, torch.Tensor], float, float]:
    """Simulate 4 clients x 3 rounds; return the final model, accuracy and seconds."""
    config = SimConfig(
        task=task,
        clients=4,
        rounds=3,
        seed=1,
        device=device,
        out=out / device,
        learning_rate=0.05,
        log_level="warning",
    )
    started = time.perf_counter()
    result = simulate(config)
    seconds = time.perf_counter() - started
    assert result.outcome.finished, result.outcome.reason
    model = torch.load(out / device / "model.pt", weights_only=True)
    lines = (out / device / "metrics.jsonl").read_text().splitlines()
    accuracy = float(json.loads(lines[-1])["eval_accuracy"])
    return model, accuracy, seconds


def main() -> int:
    """Run the checks; print results; 0 when all pass."""
    out = Path(sys.argv[1])
    failures = 0
    print(
        "auto ->",
        resolve_device("auto"),
        "| cuda:0 ->",
        resolve_device("cuda:0"),
        "|",
        torch.cuda.get_device_name(0),
        "| tf32: matmul",
        torch.backends.cuda.matmul.allow_tf32,
        "cudnn",
        torch.backends.cudnn.allow_tf32,
    )
    if "--no-tf32" in sys.argv:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    for task in ("synthetic", "digits"):
        cpu_model, cpu_acc, cpu_s = run(task, "cpu", out / task)
        gpu_model, gpu_acc, gpu_s = run(task, "cuda", out / task)
        worst = max(float((cpu_model[k] - gpu_model[k]).abs().max()) for k in cpu_model)
        on_cpu = all(t.device.type == "cpu" for t in gpu_model.values())
        ok = on_cpu and worst < 1e-4 and abs(cpu_acc - gpu_acc) < 0.01
        failures += not ok
        print(
            f"{task}: cpu acc {cpu_acc:.4f} in {cpu_s:.1f}s | cuda acc {gpu_acc:.4f} in "
            f"{gpu_s:.1f}s | max |cpu-cuda| weight diff {worst:.2e} | saved on cpu {on_cpu} | "
            f"{'OK' if ok else 'FAIL'}"
        )
    model = CharLSTM(81).cuda()
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randint(0, 80, (256, 80), generator=generator),
        torch.randint(0, 80, (256,), generator=generator),
    )
    before = evaluate_classifier(model, data)
    result = train_classifier(model, data, TrainConfig(3, 32, 1.0, seed=0, proximal_mu=0.01))
    after = evaluate_classifier(model, data)
    lstm_ok = after.loss < before.loss and next(model.parameters()).is_cuda
    failures += not lstm_ok
    print(
        f"char-LSTM on cuda with FedProx mu=0.01: loss {before.loss:.3f} -> {after.loss:.3f} "
        f"(train loss {result.loss:.3f}) | {'OK' if lstm_ok else 'FAIL'}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
