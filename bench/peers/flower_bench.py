"""Flower 1.42 (legacy gRPC) against fedsilo on the same rounds, interleaved, per repetition.

    python bench/peers/flower_bench.py [--which big,many] [--rounds 6] [--repeats 3]
                                       [--big-mib 256] [--payload random|zeros] [--json out]

Flower lives in its own venv, ``bench/.venv-flwr`` (git-ignored), created on first use with
``python3 -m venv`` and ``pip install flwr==1.42.0``; it is never a dependency of fedsilo, and
this file imports flwr and numpy only inside the ``server`` and ``client`` roles, which run in
that venv. The orchestrator (no subcommand) runs in fedsilo's venv: each repetition runs one
fedsilo job (``bench/round_bench.py``'s, the same case) and then one Flower job, so the ratio
of each repetition compares two jobs that ran minutes apart at most.

Each Flower job is a real ``flwr.server.start_server`` process (FedAvg, plaintext) and real
``flwr.client.start_client(..., transport="grpc-bidi")`` processes, one per client, whose
NumPyClient.fit returns the parameters it received (no-op training, weight 1). The model is
numpy float32 of seeded random values in [-1, 1) (zeros only as a labelled comparison): one
array of ``--big-mib`` MiB with 2 clients (big), 2,621 floats (0.01 MiB) with 10 clients
(many). Federated evaluation is off (fraction_evaluate=0); fedsilo's clients run the task's
(no-op) evaluate inside the training step, which costs nothing here.

Timing, the same boundary as fedsilo's ``round_done.seconds`` as far as Flower allows:

- round_s: from entering the strategy's ``configure_fit`` (before any client is sent the
  model) to leaving ``aggregate_fit`` (the new global parameters exist).
- cycle_s: from leaving ``aggregate_fit`` of round r-1 to leaving it in round r.
- down_s / up_s (one client): ``configure_fit`` to the client's entering ``fit`` (the model
  received and deserialized), and the client's leaving ``fit`` to entering ``aggregate_fit``
  (the update received; Flower's serialization of it included).

Round 1 is skipped (warm-up, and its configure_fit waits for the clients to connect); each
job's figure is the median of its rounds 2..N. Peak RSS comes from /usr/bin/time.
``run_job()`` is also the WAN benchmark's Flower trial, inside network namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import (
    LOOPBACK,
    Conditions,
    Placement,
    cell,
    interleave,
    markdown_table,
    max_rss_mib,
    ratios,
    stop,
    summary,
    write_report,
)

HERE = Path(__file__).resolve().parent
VENV = HERE.parent / ".venv-flwr"
FLWR = "flwr==1.42.0"
MIB = 1 << 20
TINY_MIB = 0.01
SEED = 0
CASES = {"big": 2, "many": 10}  # clients of each case; matches round_bench's big and many-10


# ---------------------------------------------------------------------- roles (in the venv)


def serve(address: str, model_mib: float, clients: int, rounds: int, payload: str) -> None:
    """Run a Flower server for ``rounds`` rounds; print one JSON line per round's timing."""
    import numpy as np
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, start_server
    from flwr.server.strategy import FedAvg

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        """FedAvg that prints when each round starts sending and finishes aggregating."""

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            self._started = time.time()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            received = time.time()
            aggregated = super().aggregate_fit(server_round, results, failures)
            line = {
                "event": "round_done",
                "round": server_round,
                "started": self._started,
                "received": received,
                "done": time.time(),
                "results": len(results),
                "failures": len(failures),
            }
            print(json.dumps(line), flush=True)
            return aggregated

    elements = int(model_mib * MIB) // 4
    if payload == "zeros":
        values = np.zeros(elements, dtype=np.float32)
    else:  # seeded, uniform in [-1, 1): every page really read, nothing compressible
        values = np.random.default_rng(SEED).random(elements, dtype=np.float32) * 2 - 1
    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=clients,
        min_evaluate_clients=0,
        min_available_clients=clients,
        accept_failures=False,
        initial_parameters=ndarrays_to_parameters([values]),
        on_fit_config_fn=lambda server_round: {"round": server_round},
    )
    del values
    start_server(
        server_address=address,
        config=ServerConfig(num_rounds=rounds),
        strategy=strategy,
    )


def take_part(address: str) -> None:
    """Run one Flower client whose fit returns what it received; print when fit runs."""
    from flwr.client import NumPyClient, start_client

    class EchoClient(NumPyClient):  # type: ignore[misc]
        """No-op training: the update is the model received, with weight 1."""

        def get_parameters(self, config: Any) -> Any:
            return []

        def fit(self, parameters: Any, config: Any) -> Any:
            line = {"event": "fit", "round": config["round"], "entered": time.time()}
            print(json.dumps(line | {"left": time.time()}), flush=True)
            return parameters, 1, {}

        def evaluate(self, parameters: Any, config: Any) -> Any:
            return 0.0, 1, {}

    start_client(server_address=address, client=EchoClient().to_client(), transport="grpc-bidi")


# ---------------------------------------------------------------------- orchestrator


def ensure_venv() -> Path:
    """Create bench/.venv-flwr with flwr 1.42.0 unless it is there; return its python."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed-flwr-1.42.0"
    if stamp.exists():
        return python
    base = shutil.which("python3") or sys.executable
    print(f"creating {VENV} with {FLWR} (once)", file=sys.stderr)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", FLWR],
        check=True,
        timeout=1200,
    )
    stamp.touch()
    return python


def run_job(
    python: Path,
    model_mib: float,
    clients: int,
    rounds: int,
    *,
    workdir: Path,
    timeout: float,
    payload: str = "random",
    placement: Placement = LOOPBACK,
) -> dict[str, Any]:
    """One Flower job; per round (>= 2) seconds of the round, its cycle and each way; RSS."""
    host, port = placement.address()
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    timing = ["/usr/bin/time", "-f", "MAXRSS %M"]
    script = str(Path(__file__).resolve())
    server_out, server_err = workdir / "server.out", workdir / "server.err"
    processes: list[subprocess.Popen[bytes]] = []
    outs = [workdir / f"c{index}.out" for index in range(clients)]
    errs = [workdir / f"c{index}.err" for index in range(clients)]
    try:
        argv = [*placement.server_prefix, *timing, str(python), script, "server"]
        argv += ["--address", f"{placement.bind}:{port}"]
        argv += ["--mib", str(model_mib), "--clients", str(clients), "--rounds", str(rounds)]
        argv += ["--payload", payload]
        with server_out.open("wb") as out, server_err.open("wb") as err:
            processes.append(
                subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
            )
        # Flower's legacy client gives up at once on a refused connection: start it only once
        # the server says it listens (making a big random model takes it a while)
        wait_for_line(server_err, "gRPC server running", processes[0], timeout)
        for out_path, err_path in zip(outs, errs, strict=True):
            argv = [*placement.client_prefix, *timing, str(python), script, "client"]
            argv += ["--server", f"{host}:{port}"]
            with out_path.open("wb") as out, err_path.open("wb") as err:
                processes.append(
                    subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
                )
        deadline = time.monotonic() + timeout
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"flower job ran past {timeout:g}s; see {workdir}") from None
    finally:
        for process in processes:
            stop(process)
    done = {line["round"]: line for line in _lines(server_out) if line["event"] == "round_done"}
    if codes[0] != 0 or len(done) != rounds or any(d["failures"] for d in done.values()):
        tail = server_err.read_text()[-3000:]
        raise RuntimeError(f"flower job failed (exit codes {codes}); server stderr:\n{tail}")
    fits = {line["round"]: line for line in _lines(outs[0]) if line["event"] == "fit"}
    measured = range(2, rounds + 1)
    return {
        "round_s": [done[r]["done"] - done[r]["started"] for r in measured],
        "cycle_s": [done[r]["done"] - done[r - 1]["done"] for r in measured],
        "down_s": [fits[r]["entered"] - done[r]["started"] for r in measured],
        "up_s": [done[r]["received"] - fits[r]["left"] for r in measured],
        "server_peak_rss_mib": max_rss_mib(server_err),
        "client_peak_rss_mib": max(max_rss_mib(path) for path in errs),
    }


def wait_for_line(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once ``text`` is in the file ``path``; raise if ``process`` ends or time runs out."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"flower server never said {text!r}; its stderr:\n{tail}")
        time.sleep(0.1)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text().splitlines() if raw.startswith("{")]


def job_medians(job: dict[str, Any]) -> dict[str, float]:
    """A job's figures for one repetition: the median of each per-round list, and the RSS."""
    return {
        key: statistics.median(value) if isinstance(value, list) else float(value)
        for key, value in job.items()
        if key in ("round_s", "cycle_s", "server_peak_rss_mib", "client_peak_rss_mib")
    }


def trials(python: Path, name: str, args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The fedsilo job and the Flower job of case ``name``, in that order."""
    from bench import round_bench

    clients = CASES[name]
    mib = args.big_mib if name == "big" else TINY_MIB
    case = round_bench.Case(name, mib, clients, args.payload)

    def fedsilo() -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix=f"peers-fedsilo-{name}-") as tmp:
            job = round_bench.run_job(case, args.rounds, Path(tmp), 100, args.job_timeout)
        job["client_peak_rss_mib"] = max(job["client_peak_rss_mib"])
        return job_medians(job)

    def flower() -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix=f"peers-flower-{name}-") as tmp:
            job = run_job(
                python,
                mib,
                clients,
                args.rounds,
                workdir=Path(tmp),
                timeout=args.job_timeout,
                payload=args.payload,
            )
        return job_medians(job)

    return [("fedsilo", fedsilo), ("flower", flower)]


def main() -> int:
    """Run each case's fedsilo and Flower jobs interleaved; print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role")
    server = roles.add_parser("server", help="(internal) the Flower server of one job")
    server.add_argument("--address", required=True, help="HOST:PORT to listen on")
    server.add_argument("--mib", type=float, required=True)
    server.add_argument("--clients", type=int, required=True)
    server.add_argument("--rounds", type=int, required=True)
    server.add_argument("--payload", choices=["random", "zeros"], default="random")
    client = roles.add_parser("client", help="(internal) one Flower client")
    client.add_argument("--server", required=True)
    parser.add_argument("--which", default="big,many", help="comma-separated: big, many")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per job (round 1 skipped)")
    parser.add_argument("--repeats", type=int, default=3, help="fedsilo + Flower jobs per case")
    parser.add_argument("--big-mib", type=float, default=256.0)
    parser.add_argument("--payload", choices=["random", "zeros"], default="random")
    parser.add_argument("--job-timeout", type=float, default=1200.0, help="seconds per job")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.role == "server":
        serve(args.address, args.mib, args.clients, args.rounds, args.payload)
        return 0
    if args.role == "client":
        take_part(args.server)
        return 0
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is warm-up)")
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    if not which or set(which) - set(CASES):
        parser.error(f"--which: choose from {sorted(CASES)}")
    python = ensure_venv()
    conditions = Conditions()
    report: dict[str, Any] = {"flower": FLWR, "rounds": args.rounds, "payload": args.payload}
    report["cases"] = {}
    for name in which:
        repetitions = interleave(
            trials(python, name, args),
            args.repeats,
            progress=lambda rep, trial, figures: print(f"{rep + 1} {trial}: {figures}", flush=True),
        )
        report["cases"][name] = {
            "clients": CASES[name],
            "model_mib": args.big_mib if name == "big" else TINY_MIB,
            "fedsilo": {
                k: summary([r["fedsilo"][k] for r in repetitions])
                for k in repetitions[0]["fedsilo"]
            },
            "flower": {
                k: summary([r["flower"][k] for r in repetitions]) for k in repetitions[0]["flower"]
            },
            "round_s_ratio": ratios(repetitions, "flower.round_s", "fedsilo.round_s"),
            "cycle_s_ratio": ratios(repetitions, "flower.cycle_s", "fedsilo.cycle_s"),
            "repetitions": repetitions,
        }
    report["conditions"] = conditions.end().as_dict()
    print_report(report)
    write_report(args.json, report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    """One row per case: each side's round_s and the per-repetition ratio."""
    rows = []
    for name, case in report["cases"].items():
        rows.append(
            [
                f"{name} ({case['model_mib']:g} MiB x {case['clients']})",
                cell(case["flower"]["round_s"], 3, " s"),
                cell(case["fedsilo"]["round_s"], 3, " s"),
                cell(case["round_s_ratio"], 2, " x"),
                cell(case["cycle_s_ratio"], 2, " x"),
            ]
        )
    label = "" if report["payload"] == "random" else " ZERO-FILLED models: comparison only."
    print(
        markdown_table(
            ["case", "Flower round_s", "fedsilo round_s", "Flower / fedsilo", "cycle ratio"], rows
        )
    )
    print(
        f"medians of each job's rounds 2-{report['rounds']}; ratios within each repetition, "
        f"then median [min, max] over the repetitions.{label}"
    )
    print(report["conditions"]["line"])


if __name__ == "__main__":
    sys.exit(main())
