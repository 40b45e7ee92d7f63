"""One training rank of ``fl-client --nproc-per-node N``, started by torch's elastic agent.

``main([FOLDER])``, called by ``client/rank_entry.py`` once the rank is tied to the client's
life: read the round (``round.json``), join the process group (``env://``: the agent's store
on 127.0.0.1, ``client/rank_launch.py``), build the task the client admitted with its options,
the model and the client's data, load the received weights from the shared ``weights.bin``,
train through the task with the model in ``DistributedDataParallel``, and on rank 0 write the
trained weights back into ``weights.bin`` and the result into ``result.json``. Return 0, or 1
after logging why (and recording it in the error file torch's agent reads, so the client can
say in one line what failed).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import structlog
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
from torch.nn.parallel import DistributedDataParallel

from fedsilo.client.rank_files import (
    RESULT_FILE,
    WEIGHTS_FILE,
    RankResult,
    RankRound,
    SharedWeights,
    read_round,
    write_json,
)
from fedsilo.common.logging import configure_logging, get_logger
from fedsilo.common.specs import check_specs_match, specs_of
from fedsilo.tasks.loading import instantiate_task, resolve_task_class

# A collective that waits longer than this for a rank fails, so a rank that hangs (rather than
# dies) ends the round too; generous, since ranks meet only once they have loaded their data.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


def main(argv: Sequence[str] | None = None) -> int:
    """Train this rank's part of the round in FOLDER; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: rank_worker.main([FOLDER])", file=sys.stderr)
        return 2
    folder = Path(args[0])
    spec = read_round(folder)
    sys.path[:0] = [entry for entry in spec.sys_path if entry not in sys.path]
    configure_logging(spec.log_level)
    rank = int(os.environ["RANK"])
    log = get_logger(**spec.log_context, rank=rank)
    try:
        train_rank(spec, folder, rank, int(os.environ["LOCAL_RANK"]), log)
    except Exception as exc:  # reported in the log and to the agent, then a non-zero exit
        log.exception("rank_failed", error=f"{type(exc).__name__}: {exc}")
        ErrorHandler().record_exception(exc)
        return 1
    return 0


def train_rank(
    spec: RankRound,
    folder: Path,
    rank: int,
    local_rank: int,
    log: structlog.typing.FilteringBoundLogger,
) -> None:
    """Join the group, train the round's model on this rank; rank 0 writes the result."""
    torch.set_num_threads(spec.threads)
    device = torch.device("cuda", local_rank) if spec.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Every rank is on this host: keep gloo's and nccl's own sockets on the loopback too.
    loopback = _loopback_interface()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        task = instantiate_task(
            resolve_task_class(spec.task_class), json.loads(spec.options_json), spec.task_name
        )
        model = task.build_model(spec.model_seed)
        state = model.state_dict()
        check_specs_match(specs_of(state), spec.specs())
        weights = SharedWeights(folder / WEIGHTS_FILE, spec.specs())
        weights.load_into(state)
        data_dir = Path(spec.data_dir) if spec.data_dir is not None else None
        data = task.load_data(spec.partition, spec.data_seed, data_dir)
        model.to(device)
        ids = [local_rank] if device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids)
        log.debug("rank_training", backend=backend, device=str(device))
        result = task.train(ddp, data, spec.training.config())
        if rank == 0:
            weights.store(model.state_dict())
            report = RankResult(examples=result.examples, loss=result.loss, steps=result.steps)
            write_json(folder / RESULT_FILE, report)
    finally:
        dist.destroy_process_group()


def _loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return names[0] if names else "lo"
