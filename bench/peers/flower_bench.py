"""Benchmark 6 of issue 6: the round benchmarks (3 and 4) with Flower 1.42, legacy gRPC.

    python bench/peers/flower_bench.py [--which big,many] [--rounds 6] [--big-mib 256]
                                       [--fedsilo build/bench-rounds-peers.json] [--json out]

Flower lives in its own venv, ``bench/.venv-flwr`` (git-ignored), created on first use with
``python3 -m venv`` and ``pip install flwr==1.42.0``; it is never a dependency of fedsilo, and
this file imports flwr and numpy only inside the ``server`` and ``client`` roles, which run in
that venv. The orchestrator (no subcommand) runs in any Python 3.10+.

Each job is a real ``flwr.server.start_server`` process (FedAvg, plaintext, 127.0.0.1) and
real ``flwr.client.start_client(..., transport="grpc-bidi")`` processes, one per client, whose
NumPyClient.fit returns the parameters it received (no-op training, weight 1). The model is
numpy float32: one array of ``--big-mib`` MiB with 2 clients (big), 2,621 floats (0.01 MiB)
with 10 clients (many). Federated evaluation is off (fraction_evaluate=0); fedsilo's clients
run the task's (no-op) evaluate inside the training step, which costs nothing here.

Timing, the same boundary as fedsilo's ``round_done.seconds`` as far as Flower allows:

- round_s: from entering the strategy's ``configure_fit`` (before any client is sent the
  model) to leaving ``aggregate_fit`` (the new global parameters exist).
- cycle_s: from leaving ``aggregate_fit`` of round r-1 to leaving it in round r.

Round 1 is skipped (warm-up, and its configure_fit waits for the clients to connect). Peak RSS
comes from /usr/bin/time. With ``--fedsilo`` (round_bench.py's JSON of the same run), the ratio
Flower / fedsilo seconds per round is printed: how many times faster fedsilo is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import free_port, max_rss_mib, stop, summary

HERE = Path(__file__).resolve().parent
VENV = HERE.parent / ".venv-flwr"
FLWR = "flwr==1.42.0"
MIB = 1 << 20
TINY_MIB = 0.01
CASES = {"big": 2, "many": 10}  # clients of each case; matches round_bench's big and many-10


# ---------------------------------------------------------------------- roles (in the venv)


def serve(port: int, model_mib: float, clients: int, rounds: int) -> None:
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
            aggregated = super().aggregate_fit(server_round, results, failures)
            done = time.time()
            line = {
                "event": "round_done",
                "round": server_round,
                "started": self._started,
                "done": done,
                "results": len(results),
                "failures": len(failures),
            }
            print(json.dumps(line), flush=True)
            return aggregated

    model = [np.zeros(int(model_mib * MIB) // 4, dtype=np.float32)]
    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=clients,
        min_evaluate_clients=0,
        min_available_clients=clients,
        accept_failures=False,
        initial_parameters=ndarrays_to_parameters(model),
    )
    del model
    start_server(
        server_address=f"127.0.0.1:{port}",
        config=ServerConfig(num_rounds=rounds),
        strategy=strategy,
    )


def take_part(address: str) -> None:
    """Run one Flower client whose fit returns what it received."""
    from flwr.client import NumPyClient, start_client

    class EchoClient(NumPyClient):  # type: ignore[misc]
        """No-op training: the update is the model received, with weight 1."""

        def get_parameters(self, config: Any) -> Any:
            return []

        def fit(self, parameters: Any, config: Any) -> Any:
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
    python: Path, model_mib: float, clients: int, rounds: int, *, workdir: Path, timeout: float
) -> dict[str, Any]:
    """One Flower job; return round_s and cycle_s of rounds >= 2 and peak RSS of each side."""
    port = free_port()
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    timing = ["/usr/bin/time", "-f", "MAXRSS %M"]
    script = str(Path(__file__).resolve())
    server_out, server_err = workdir / "server.out", workdir / "server.err"
    processes: list[subprocess.Popen[bytes]] = []
    client_errs = [workdir / f"c{index}.err" for index in range(clients)]
    try:
        with server_out.open("wb") as out, server_err.open("wb") as err:
            argv = [str(python), script, "server", "--port", str(port)]
            argv += ["--mib", str(model_mib), "--clients", str(clients), "--rounds", str(rounds)]
            processes.append(
                subprocess.Popen(
                    [*timing, *argv], stdout=out, stderr=err, env=env, start_new_session=True
                )
            )
        for path in client_errs:
            with path.open("wb") as err:
                argv = [str(python), script, "client", "--server", f"127.0.0.1:{port}"]
                processes.append(
                    subprocess.Popen(
                        [*timing, *argv], stdout=err, stderr=err, env=env, start_new_session=True
                    )
                )
        deadline = time.monotonic() + timeout
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"flower job ran past {timeout:g}s; see {workdir}") from None
    finally:
        for process in processes:
            stop(process)
    lines = [json.loads(raw) for raw in server_out.read_text().splitlines() if raw.startswith("{")]
    done = {line["round"]: line for line in lines if line["event"] == "round_done"}
    if codes[0] != 0 or len(done) != rounds or any(d["failures"] for d in done.values()):
        tail = server_err.read_text()[-3000:]
        raise RuntimeError(f"flower job failed (exit codes {codes}); server stderr:\n{tail}")
    measured = range(2, rounds + 1)
    return {
        "round_s": [done[r]["done"] - done[r]["started"] for r in measured],
        "cycle_s": [done[r]["done"] - done[r - 1]["done"] for r in measured],
        "server_peak_rss_mib": max_rss_mib(server_err),
        "client_peak_rss_mib": max(max_rss_mib(path) for path in client_errs),
    }


def flower_figures(
    python: Path, which: list[str], *, rounds: int, repeats: int, big_mib: float, timeout: float
) -> dict[str, dict[str, Any]]:
    """Run the selected Flower cases; return their figures keyed like round_bench's cases."""
    results: dict[str, dict[str, Any]] = {}
    for name in which:
        clients = CASES[name]
        model_mib = big_mib if name == "big" else TINY_MIB
        runs = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory(prefix=f"flower-bench-{name}-") as tmp:
                runs.append(
                    run_job(python, model_mib, clients, rounds, workdir=Path(tmp), timeout=timeout)
                )
        key = "big" if name == "big" else f"many-{clients}"
        results[key] = {
            "clients": clients,
            "model_mib": model_mib,
            "rounds_measured": len(runs) * (rounds - 1),
            "round_s": summary([s for run in runs for s in run["round_s"]]),
            "cycle_s": summary([s for run in runs for s in run["cycle_s"]]),
            "server_peak_rss_mib": max(run["server_peak_rss_mib"] for run in runs),
            "client_peak_rss_mib": max(run["client_peak_rss_mib"] for run in runs),
        }
    return results


def cell(figure: dict[str, float]) -> str:
    """``median [min, max]`` in seconds."""
    return f"{figure['median']:.3f} [{figure['min']:.3f}, {figure['max']:.3f}]"


def main() -> int:
    """Run Flower's cases, compare with fedsilo's figures if given, print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role")
    server = roles.add_parser("server", help="(internal) the Flower server of one job")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--mib", type=float, required=True)
    server.add_argument("--clients", type=int, required=True)
    server.add_argument("--rounds", type=int, required=True)
    client = roles.add_parser("client", help="(internal) one Flower client")
    client.add_argument("--server", required=True)
    parser.add_argument("--which", default="big,many", help="comma-separated: big, many")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per job (round 1 skipped)")
    parser.add_argument("--repeats", type=int, default=1, help="jobs per case")
    parser.add_argument("--big-mib", type=float, default=256.0)
    parser.add_argument("--job-timeout", type=float, default=1200.0, help="seconds per job")
    parser.add_argument("--fedsilo", type=Path, help="round_bench.py --json of the same run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.role == "server":
        serve(args.port, args.mib, args.clients, args.rounds)
        return 0
    if args.role == "client":
        take_part(args.server)
        return 0
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is warm-up)")
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    if set(which) - set(CASES):
        parser.error(f"--which: choose from {sorted(CASES)}")
    python = ensure_venv()
    flower = flower_figures(
        python,
        which,
        rounds=args.rounds,
        repeats=args.repeats,
        big_mib=args.big_mib,
        timeout=args.job_timeout,
    )
    fedsilo: dict[str, Any] = {}
    if args.fedsilo is not None:
        fedsilo = json.loads(args.fedsilo.read_text())["cases"]
    print(f"{'case':>8} {'clients':>7}  {'Flower round_s':>26}  {'fedsilo round_s':>26}  ratio")
    report: dict[str, Any] = {"flower": FLWR, "rounds": args.rounds, "cases": {}}
    for key, figures in flower.items():
        ours = fedsilo.get(key, {})
        entry: dict[str, Any] = {"flower": figures}
        line = f"{key:>8} {figures['clients']:>7}  {cell(figures['round_s']):>26}  "
        if "round_s" in ours:
            entry["fedsilo"] = ours
            for measure in ("round_s", "cycle_s"):
                entry[f"{measure}_ratio"] = figures[measure]["median"] / ours[measure]["median"]
            line += f"{cell(ours['round_s']):>26}  {entry['round_s_ratio']:.1f} x"
        else:
            line += f"{'-':>26}  -"
        report["cases"][key] = entry
        print(line)
    print("ratio = Flower / fedsilo median seconds per round (how many times faster fedsilo is)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
