"""The job's global model and how it advances: the strategy's step, DP-FedAvg, central evaluation.

Owned by the coordinator thread. ``state`` is replaced after every round, never changed in
place: the streams that send it and a checkpoint that writes it read it while the next round
runs. The old model's memory goes back to the upload store once nothing reads it.

With SCAFFOLD a round's stream also carries the server's control variate after the model
(``round_frames``, ``round_specs``), and updates carry their control-variate change after it:
the fold sums those too (``fold_like``). A strategy whose step needs each update's weight
(``RoundStep``: FedNova, SCAFFOLD) gets the round's contributions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from fedsilo.common import control_variates
from fedsilo.common.errors import CodecError, JobAbortedError
from fedsilo.common.secagg import SecAggConfig, Trust
from fedsilo.common.specs import TensorSpec, specs_of
from fedsilo.common.wire import SERVER_CHUNKS, ModelFrames
from fedsilo.server import messages
from fedsilo.server.central_eval import CentralEvaluator
from fedsilo.server.dp_round import DpRound
from fedsilo.server.job_state import Round
from fedsilo.server.secagg_round import SecAggRound
from fedsilo.server.strategies import Strategy
from fedsilo.server.strategies.fedavg import accumulator_dtype
from fedsilo.server.strategies.round_step import Contribution, RoundStep
from fedsilo.server.strategies.scaffold import Scaffold
from fedsilo.server.uploads import UploadStore
from fedsilo.server.validation import check_finite

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SecAggSettingsOfJob:
    """What every round's secure aggregation needs: the settings, the CA, a tee folder."""

    config: SecAggConfig
    trust: Trust | None
    tee_dir: Path


class GlobalModel:
    """The global model of one job, its strategy and what acts on each new model."""

    def __init__(
        self,
        state: State,
        strategy: Strategy,
        store: UploadStore,
        *,
        central: CentralEvaluator | None = None,
        dp: DpRound | None = None,
        secagg: SecAggSettingsOfJob | None = None,
    ) -> None:
        self.state = state
        self.specs = specs_of(state)
        self.nbytes = sum(spec.nbytes for spec in self.specs)
        self.strategy = strategy
        self.store = store
        self.central = central
        self.dp = dp
        self.control = strategy if isinstance(strategy, Scaffold) else None
        # What updates carry after the model's own tensors (SCAFFOLD's dc), under every codec.
        self.update_extras: list[TensorSpec] = (
            control_variates.delta_specs(self.specs) if self.control is not None else []
        )
        self.secagg = secagg

    def frames(self, chunk_size: int) -> ModelFrames:
        """The model's frames, checksummed once and framed lazily by each stream."""
        return ModelFrames(list(self.state.values()), chunk_size, SERVER_CHUNKS, messages.trailer)

    @property
    def round_specs(self) -> list[TensorSpec]:
        """What a round's model stream carries: the model, then SCAFFOLD's ``c`` if any."""
        if self.control is None:
            return self.specs
        return self.specs + control_variates.server_specs(self.specs)

    def round_frames(self, chunk_size: int) -> ModelFrames:
        """The frames of a round's model stream (``round_specs``)."""
        if self.control is None:
            return self.frames(chunk_size)
        tensors = [*self.state.values(), *self.control.server_control(self.state).values()]
        return ModelFrames(tensors, chunk_size, SERVER_CHUNKS, messages.trailer)

    @property
    def fold_like(self) -> State:
        """The tensors a round's fold sums: the model's, then the updates' extras."""
        if not self.update_extras:
            return self.state
        return {**self.state, **control_variates.zeros(self.update_extras)}

    def sum_buffers(self) -> State:
        """Model-shaped buffers in the sum's dtypes (spare ones when the store has them)."""
        like = self.fold_like
        dtypes = {name: accumulator_dtype(t.dtype) for name, t in like.items()}
        return self.store.sum_buffers(like, dtypes)

    def secagg_round(self, job_id: int, number: int, selected: list[int]) -> SecAggRound | None:
        """The secure aggregation of a new round, when the job uses it."""
        if self.secagg is None:
            return None
        return SecAggRound(
            job_id=job_id,
            round_number=number,
            participants=selected,
            global_state=self.state,
            config=self.secagg.config,
            trust=self.secagg.trust,
            tee_dir=self.secagg.tee_dir,
        )

    def next_state(self, current: Round) -> State:
        """The model the round's fold leads to, through DP-FedAvg and the strategy."""
        strategy = self.strategy
        if current.secagg is not None:  # the survivors' unmasked mean: a sum, no single update
            like = self.state  # into a recycled model when there is one: no fresh pages
            out = self.store.sum_buffers(like, {name: t.dtype for name, t in like.items()})
            mean = current.secagg.mean_state(self.state, out)
            if self.dp is not None:  # distributed: the clients' noise is in it already
                survivors = len(current.secagg.result.survivors)
                mean = self.dp.noised(self.state, mean, survivors, current.number)
            new_state = strategy.next_global(self.state, mean)  # type: ignore[union-attr]
        elif strategy.needs_all_updates:
            updates, weights = current.fold.collected()
            new_state = strategy.combine(self.state, updates, weights)
        else:
            mean = current.fold.mean()
            if self.dp is not None:
                mean = self.dp.noised(self.state, mean, len(current.fold.folded), current.number)
            if isinstance(strategy, RoundStep):
                reports = [current.reports[cid] for cid in sorted(current.reports)]
                contributions = [Contribution(r.weight, r.normalizer) for r in reports]
                new_state = strategy.round_step(self.state, mean, contributions)
            else:
                new_state = strategy.next_global(self.state, mean)
        try:
            check_finite(new_state)
        except CodecError as exc:  # the magnitude bound should make this impossible
            raise JobAbortedError(f"round {current.number}: the new global model: {exc}") from exc
        return new_state

    def replace(self, new_state: Mapping[str, torch.Tensor], recycle: bool) -> None:
        """Make ``new_state`` the model; with ``recycle``, the old one's memory is reused."""
        old = self.state
        self.state = {spec.name: new_state[spec.name].contiguous() for spec in self.specs}
        if recycle:
            self.store.recycle(old, in_use=self.state)

    def row_fields(
        self, log: structlog.typing.FilteringBoundLogger, charge: bool
    ) -> dict[str, Any]:
        """Metrics-row fields of the current model: central evaluation, and DP spent (``charge``:
        record the round with the accountant, before the model can leave the server)."""
        fields: dict[str, Any] = {}
        if self.central is not None:
            fields.update(self.central.row_fields(self.state, log))
        if charge and self.dp is not None:
            fields.update(self.dp.charge())
        return fields

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint keeps beyond the model and the strategy's tensors."""
        return {"dp": self.dp.state_dict()} if self.dp is not None else {}

    def restore(
        self, state: Mapping[str, torch.Tensor], strategy: Any, extra: Mapping[str, Any]
    ) -> None:
        """Continue from a checkpoint: its model, strategy state and extra state."""
        self.state = {spec.name: state[spec.name] for spec in self.specs}
        self.strategy.load_state_dict(strategy)
        if self.dp is not None and "dp" in extra:
            self.dp.load_state_dict(extra["dp"])
