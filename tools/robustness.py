"""Byzantine-robustness experiment: every strategy against every attack, in one process.

Runs federated training on the built-in synthetic task with the clients simulated in-process (no
sockets, no daemons). Clients ``0 .. byzantine-1`` replace their trained model by an attack;
every update then passes the server's own ``check_finite`` before it may reach a strategy, as
on the server. After the last round the global model is evaluated on every honest client's
held-out split. ``python tools/robustness.py --write docs/robustness.md`` regenerates the doc.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedsilo.common.errors import CodecError
from fedsilo.common.seeding import derive_seed
from fedsilo.server.strategies import fedavg
from fedsilo.server.strategies.krum import Krum
from fedsilo.server.strategies.median import Median
from fedsilo.server.strategies.trimmed_mean import TrimmedMean
from fedsilo.server.validation import check_finite
from fedsilo.tasks import TrainConfig
from fedsilo.tasks.builtin.synthetic import SyntheticTask

State = dict[str, torch.Tensor]
Aggregate = Callable[[State, list[State], list[float]], State]

STRATEGIES = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum")
ATTACKS = ("none", "sign-flip", "scale-100", "noise", "nan")
ROUNDS = 30
SEEDS = (0, 5)
TRIM_FRACTION = 0.3
NOISE_STD = 10.0
SCALE = 100.0
LOCAL_EPOCHS = 1
BATCH_SIZE = 32
LEARNING_RATE = 0.1


def make_aggregate(strategy_name: str, accepted: int, byzantine: int, rejected: int) -> Aggregate:
    """Return the round's aggregation rule; Krum assumes ``byzantine - rejected`` faulty left."""
    # A rejected update proves its sender faulty, so at most byzantine - rejected of the
    # accepted ones are Byzantine; without this Krum could not run when NaN senders are dropped
    # (7 accepted updates < 2 * 3 + 3).
    faulty = max(byzantine - rejected, 0)
    if strategy_name == "fedavg":
        return lambda global_state, updates, weights: fedavg.aggregate([*updates], weights)
    if strategy_name == "median":
        return Median().combine
    if strategy_name == "trimmed-mean":
        return TrimmedMean(TRIM_FRACTION).combine
    if strategy_name == "krum":
        return Krum(byzantine=faulty, multi=1).combine
    if strategy_name == "multi-krum":
        # m = n - f: the most updates that can still leave out every Byzantine one.
        return Krum(byzantine=faulty, multi=accepted - faulty).combine
    raise ValueError(f"unknown strategy {strategy_name!r}; known: {', '.join(STRATEGIES)}")


def attack_update(attack: str, global_state: State, trained: State, seed: int) -> State:
    """Return what a Byzantine client sends instead of its trained model ``trained``."""
    if attack == "none":
        return trained
    if attack == "sign-flip":
        return {k: g - (trained[k] - g) for k, g in global_state.items()}
    if attack == "scale-100":
        return {k: g + SCALE * (trained[k] - g) for k, g in global_state.items()}
    if attack == "noise":
        generator = torch.Generator().manual_seed(seed)
        return {
            k: g + NOISE_STD * torch.randn(g.shape, generator=generator, dtype=g.dtype)
            for k, g in global_state.items()
        }
    if attack == "nan":
        return {k: torch.full_like(g, math.nan) for k, g in global_state.items()}
    raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")


def federate(
    strategy_name: str,
    attack: str,
    *,
    honest: Iterable[int],
    byzantine: Iterable[int],
    rounds: int,
    seed: int,
) -> dict[str, Any]:
    """Train for ``rounds`` rounds with these partitions; evaluate on the honest ones."""
    if strategy_name not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy_name!r}; known: {', '.join(STRATEGIES)}")
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
    honest_ids, byzantine_ids = sorted(honest), sorted(byzantine)
    participants = sorted([*honest_ids, *byzantine_ids])
    task = SyntheticTask()
    data = {p: task.load_data(p, seed, None) for p in participants}
    model = task.build_model(seed)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rejected_total = 0
    for round_number in range(1, rounds + 1):
        updates: list[State] = []
        weights: list[float] = []
        rejected = 0
        for client in participants:
            model.load_state_dict(global_state)
            config = TrainConfig(
                local_epochs=LOCAL_EPOCHS,
                batch_size=BATCH_SIZE,
                learning_rate=LEARNING_RATE,
                seed=derive_seed(seed, "train", round_number, client),
            )
            result = task.train(model, data[client], config)
            update = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if client in byzantine_ids:
                attack_seed = derive_seed(seed, "attack", round_number, client)
                update = attack_update(attack, global_state, update, attack_seed)
            try:
                check_finite(update)  # exactly as the server does before aggregation
            except CodecError:
                rejected += 1
                continue
            updates.append(update)
            weights.append(float(result.examples))
        rejected_total += rejected
        if updates:
            aggregate = make_aggregate(strategy_name, len(updates), len(byzantine_ids), rejected)
            global_state = aggregate(global_state, updates, weights)
    model.load_state_dict(global_state)
    evaluations = [task.evaluate(model, data[p]) for p in honest_ids]
    examples = sum(e.examples for e in evaluations)
    return {
        "strategy": strategy_name,
        "attack": attack,
        "accuracy": sum(e.accuracy * e.examples for e in evaluations) / examples,
        "loss": sum(e.loss * e.examples for e in evaluations) / examples,
        "rounds": rounds,
        "honest": honest_ids,
        "byzantine": byzantine_ids,
        "rejected_updates": rejected_total,
    }


def run_experiment(
    strategy_name: str,
    attack: str,
    *,
    clients: int = 10,
    byzantine: int = 3,
    rounds: int = ROUNDS,
    seed: int = 0,
) -> dict[str, Any]:
    """Run one strategy against clients ``0 .. byzantine-1``'s attack; return the outcome."""
    if not 0 <= byzantine < clients:
        raise ValueError(f"need 0 <= byzantine < clients, got {byzantine} of {clients}")
    return federate(
        strategy_name,
        attack,
        honest=range(byzantine, clients),
        byzantine=range(byzantine),
        rounds=rounds,
        seed=seed,
    )


def byzantine_share(seed: int, clients: int = 10, byzantine: int = 3) -> float:
    """Return the fraction of all training examples that the Byzantine clients hold."""
    task = SyntheticTask()
    counts = [task.load_data(p, seed, None).train_examples for p in range(clients)]
    return sum(counts[:byzantine]) / sum(counts)


def markdown_table(results: Mapping[tuple[str, str], float]) -> str:
    """Return the strategy x attack accuracy table in Markdown."""
    lines = [
        "| strategy | " + " | ".join(ATTACKS) + " |",
        "|---" * (len(ATTACKS) + 1) + "|",
    ]
    for strategy in STRATEGIES:
        cells = " | ".join(f"{results[strategy, attack]:.3f}" for attack in ATTACKS)
        lines.append(f"| {strategy} | {cells} |")
    return "\n".join(lines)


def reading(results: Mapping[tuple[str, str], float], tolerance: float = 0.1) -> str:
    """Return one line per attack, derived from the numbers: who holds and who falls."""
    lines = []
    for attack in ATTACKS[1:]:
        held: list[str] = []
        fell: list[str] = []
        for strategy in STRATEGIES:
            clean, hit = results[strategy, "none"], results[strategy, attack]
            entry = f"{strategy} ({clean:.3f} -> {hit:.3f})"
            (held if hit >= clean - tolerance else fell).append(entry)
        lines.append(
            f"- **{attack}**: no worse than {tolerance} below the clean run: "
            f"{', '.join(held) or 'none'}; "
            f"more than {tolerance} below: {', '.join(fell) or 'none'}."
        )
    return "\n".join(lines)


def document(
    tables: Mapping[int, Mapping[tuple[str, str], float]], rounds: int, seconds: float
) -> str:
    """Return docs/robustness.md: command, setup, the measured tables and their reading."""
    seeds = " ".join(str(seed) for seed in tables)
    sections = []
    for seed, results in tables.items():
        sections.append(
            f"## Seed {seed}: the Byzantine clients hold {byzantine_share(seed):.0%} of the "
            f"training examples\n\nFinal accuracy on the honest clients' held-out data after "
            f"{rounds} rounds.\n\n{markdown_table(results)}\n\n{reading(results)}\n"
        )
    return f"""# Robustness to Byzantine clients

Generated by `python tools/robustness.py --write docs/robustness.md` (rounds {rounds}, seeds
{seeds}; {seconds:.0f} s here with one torch thread). The figures are measured, not typed: to
change them, rerun the command.

## Strategies

The robust rules live in `server/strategies/`, each a pure function plus a stateless class with
`combine(global_state, updates, weights)` and `needs_all_updates = True`: unlike FedAvg's
streaming fold they need every update of a round at once (memory O(model x clients)).

- `median`: coordinate-wise median (Yin et al. 2018); for an even count, the mean of the two
  middle values.
- `trimmed-mean`: coordinate-wise mean after dropping the floor({TRIM_FRACTION} n) largest and
  smallest values (Yin et al. 2018): 3 at each end of 10 updates, 2 of 7.
- `krum`: Krum (Blanchard et al. 2017) with f = 3, `multi=1`: the one update with the smallest
  summed squared distance to its n - f - 2 nearest others.
- `multi-krum`: the same class with `multi = n - f` (7 here): the unweighted mean of the n - f
  best-scored updates, the most that can still leave out all f Byzantine ones.
- `fedavg`: the example-weighted mean, for reference.

The robust rules ignore the example counts on purpose: a count is a claim the client makes, and
weighting by it would let a Byzantine client buy influence by claiming many examples.

## Setup

- Task: the built-in Synthetic(0.5, 0.5) (the FedProx paper's data, softmax regression),
  partitions 0-9 and the initial model generated from the seed. The data are far from
  identically distributed: most clients see one to three of the ten labels, and client sizes
  follow a power law (about 40 to 800 training examples).
- 10 clients, all in every round, {rounds} rounds, in one process (no sockets). Local training:
  {LOCAL_EPOCHS} epoch of SGD, batch size {BATCH_SIZE}, learning rate {LEARNING_RATE}, seed
  `derive_seed(seed, "train", round, client)`. FedAvg weights are the training example counts.
- Clients 0, 1, 2 are Byzantine (f = 3). In place of their trained model w (global model g) they
  send: `none` w (honest); `sign-flip` g - (w - g); `scale-100` g + {SCALE:g} (w - g); `noise`
  g + N(0, {NOISE_STD:g}^2) per element, from a seeded generator; `nan` all NaN.
- Every update first passes `fedsilo.server.validation.check_finite`, as on the server. The NaN
  updates are rejected there and never reach any strategy, so the `nan` column is training on
  the 7 honest clients alone, for every rule. Krum then assumes f = 3 minus the number
  rejected (a rejected update proves its sender faulty): 7 updates cannot satisfy n >= 2f + 3
  with f = 3.
- Accuracy: the final global model on the held-out split of each honest client (3-9),
  weighted by their held-out example counts.

{chr(10).join(sections)}
## What to take from it

- FedAvg has no defence: an attacker's pull on the mean is its example share times the size
  of what it sends, so the damage grows with the share the attackers hold and with the scale
  of the attack. Claiming more examples than it has would raise a Byzantine client's share
  further.
- The robust rules pay for robustness when nobody attacks. Each client here sees only a few
  labels, so honest updates disagree, and the rules discard honest information: the median and
  trimmed mean drop the extremes of every coordinate and ignore that some clients hold twenty
  times more data than others; Krum keeps a single client's update, which fits that client's
  few labels; Multi-Krum without an attack still leaves out f honest updates, those that
  disagree most with the rest. Compare each rule's `none` column with FedAvg's.
- An attack can raise a robust rule's accuracy above its clean run. Under attack, Multi-Krum
  leaves out the attackers' far-away updates instead of honest ones; and updates pushed to the
  extremes of every coordinate change which honest values the median and trimmed mean keep.
- Trimmed mean is only robust while it trims at least the Byzantine fraction per side (here
  0.3 of 10 = 3 = f); with 4 or more attackers among 10 some would survive the trim.
- One synthetic task and two seeds: evidence of the mechanisms, not a benchmark.
  `tests/server/test_byzantine.py` checks the main claims on a shorter run (seed 5).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the strategy x attack tables, print them, optionally write the Markdown document."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the Markdown document here")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: threads cost more than they save
    started = time.perf_counter()
    tables: dict[int, dict[tuple[str, str], float]] = {}
    for seed in args.seeds:
        results = tables.setdefault(seed, {})
        for strategy in STRATEGIES:
            for attack in ATTACKS:
                outcome = run_experiment(strategy, attack, rounds=args.rounds, seed=seed)
                results[strategy, attack] = outcome["accuracy"]
        print(f"seed {seed}, {args.rounds} rounds\n{markdown_table(results)}\n", flush=True)
    seconds = time.perf_counter() - started
    print(f"{seconds:.1f} s")
    if args.write is not None:
        args.write.write_text(document(tables, args.rounds, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
