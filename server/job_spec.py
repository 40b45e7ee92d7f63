"""What a job trains and how: the settings fl-server and fl-sim share, each declared once.

``ServerConfig`` (server/config.py) and ``SimConfig`` (sim/config.py) derive from ``JobSpec``
and add only their own settings; their flags, ``FEDSILO_*`` variables and config-file keys all
come from these fields (common/cli.py, common/settings.py). A program whose default differs
re-declares the field with ``job_field(name, default=...)``, which keeps the description and
the bounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from fedsilo.common.compression import DEFAULT_TOPK_FRACTION, Codec
from fedsilo.common.tensor_stream import DEFAULT_CHUNK_SIZE
from fedsilo.server.strategies import STRATEGIES, strategy_options_problem, unknown_strategy

# Flags other than --field-name that exist for a job setting.
JOB_FLAG_ALIASES: dict[str, tuple[str, ...]] = {"learning_rate": ("--lr",)}


class JobSpec(BaseModel):
    """The settings of one federated job that do not depend on how it is run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field(
        "synthetic", min_length=1, description="Built-in task or package.module:Name."
    )
    task_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Keyword arguments of the task (config file, or JSON in the environment).",
    )
    rounds: int = Field(5, ge=1, description="Number of training rounds.")
    seed: int = Field(
        0, ge=0, lt=2**63, description="Seed of the model, data, client sampling and training."
    )
    strategy: str = Field(
        "fedavg",
        description=f"Aggregation strategy: {', '.join(STRATEGIES)}; options in strategy_options.",
    )
    strategy_options: dict[str, float | int] = Field(
        default_factory=dict,
        description="Options of the strategy (config file, or JSON in the environment).",
    )
    min_clients: int = Field(2, ge=1, description="Clients needed to start and to finish a round.")
    clients_per_round: int | None = Field(
        None, ge=1, description="Sample this many ready clients per round (seeded)."
    )
    fraction: float | None = Field(
        None, gt=0, le=1, description="Sample this fraction of ready clients per round (seeded)."
    )
    local_epochs: int = Field(1, ge=1, description="Local epochs per round on each client.")
    batch_size: int = Field(32, ge=1, description="Local mini-batch size.")
    learning_rate: float = Field(0.1, gt=0, description="Local SGD learning rate.")
    proximal_mu: float = Field(0.0, ge=0, description="FedProx proximal weight mu (0: off).")
    optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="Local optimizer: SGD (momentum, nesterov, weight_decay) or Adam."
    )
    momentum: float = Field(0.0, ge=0, lt=1, description="Local SGD momentum (0: none).")
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0).")
    weight_decay: float = Field(
        0.0, ge=0, description="Local L2 weight decay on the gradient (SGD and Adam)."
    )
    compression: Codec = Field(
        "none",
        description="How clients encode their updates: full weights (none), deltas (delta), "
        "deltas cast (fp16, bf16), int8-quantized or top-k sparsified deltas.",
    )
    topk_fraction: float = Field(
        DEFAULT_TOPK_FRACTION, gt=0, le=1, description="topk: fraction of each tensor sent."
    )
    per_channel: bool = Field(False, description="int8: one scale per slice along dim 0.")
    update_norm_bound: float | None = Field(
        None, gt=0, description="L2 bound on an update's change to the global model."
    )
    norm_bound_action: Literal["reject", "clip"] = Field(
        "reject", description="What to do with an update over the bound."
    )
    central_data: Path | None = Field(
        None,
        description="Folder of the task's central evaluation set (for tasks that offer one; "
        "default: the task's own location).",
    )
    weighting: Literal["examples", "uniform"] = Field(
        "examples",
        description="Weight of an update in FedAvg: its training examples, or 1 for every client.",
    )
    max_examples: int = Field(
        10**9,
        ge=1,
        description="Most training examples a client may claim (clients.json can lower it "
        "per organisation); an update never weighs more than its client's Ready said.",
    )
    tensorboard: bool = Field(
        False, description="Also write TensorBoard scalars to <out>/tensorboard (extra)."
    )
    chunk_size: int = Field(
        DEFAULT_CHUNK_SIZE, ge=1024, le=64 << 20, description="Raw bytes per tensor chunk."
    )

    require_dp: bool = Field(
        False,
        description="Admit only clients that train with record-level DP-SGD under their own "
        "policy (fl-client --record-dp-epsilon or --record-dp-noise).",
    )
    secure_aggregation: bool = Field(
        False,
        description="Sum masked updates (Bonawitz et al. 2017, SecAgg+): the server learns only "
        "the sum of the surviving clients' updates and weights.",
    )
    secagg_clip_norm: float | None = Field(
        None,
        gt=0,
        description="Secure aggregation: L2 bound C of an update's change (it sets the "
        "quantization range; clients clip to it).",
    )
    secagg_max_weight: int | None = Field(
        None,
        ge=1,
        description="Secure aggregation with example weights: the largest weight a client may "
        "claim (clients cap theirs; a smaller bound quantizes more finely).",
    )
    dp_noise_multiplier: float | None = Field(
        None,
        gt=0,
        description="DP-FedAvg (organisation-level DP): z, the noise on the sum of clipped "
        "deltas has std z * dp_clip_norm; off when not given.",
    )
    dp_clip_norm: float | None = Field(
        None, gt=0, description="DP-FedAvg: C, each update's change is clipped to this L2 norm."
    )
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="DP-FedAvg: the delta of epsilon.")
    dp_target_epsilon: float | None = Field(
        None,
        gt=0,
        description="DP-FedAvg: end the job, finished, before a round that would spend more.",
    )
    dp_population: int | None = Field(
        None,
        ge=1,
        description="DP-FedAvg: clients in the federation, for the sampling rate "
        "clients_per_round / population (default: clients_per_round, i.e. rate 1).",
    )
    dp_accountant: Literal["rdp", "pld"] = Field(
        "rdp", description="DP-FedAvg: the accountant whose epsilon decides the stop."
    )
    dp_noise_seed: int | None = Field(
        None,
        ge=0,
        description="DP-FedAvg: seed the noise (reproducible research; not private to whoever "
        "knows the seed). Default: secret noise.",
    )

    @field_validator("strategy")
    @classmethod
    def _strategy_known(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(unknown_strategy(value))
        return value

    @model_validator(mode="after")
    def _strategy_options_fit(self) -> JobSpec:
        problem = strategy_options_problem(self.strategy, self.strategy_options)
        if problem is not None:
            raise ValueError(f"strategy_options: {problem}")
        return self

    @model_validator(mode="after")
    def _dp_consistent(self) -> JobSpec:
        if self.dp_noise_multiplier is None:
            return self
        if self.dp_clip_norm is None:
            raise ValueError("dp_clip_norm: DP-FedAvg needs the clipping norm C")
        if self.clients_per_round is None:
            raise ValueError(
                "clients_per_round: DP-FedAvg divides by a fixed number of clients per round"
            )
        if self.dp_population is not None and self.dp_population < self.clients_per_round:
            raise ValueError("dp_population: must be at least clients_per_round")
        if self.update_norm_bound is not None:
            raise ValueError("update_norm_bound: DP-FedAvg clips every update to dp_clip_norm")
        if self.weighting != "uniform":
            raise ValueError("weighting: DP-FedAvg weighs every update equally (give uniform)")
        if getattr(STRATEGIES[self.strategy].build, "needs_all_updates", False):
            raise ValueError(
                f"strategy: DP-FedAvg bounds the sum of updates; {self.strategy} needs each one"
            )
        if self.strategy in ("scaffold", "fednova"):
            raise ValueError(
                f"strategy: DP-FedAvg weighs updates equally and clips their change; "
                f"{self.strategy} is not analysed under it"
            )
        return self

    @model_validator(mode="after")
    def _optimizer_consistent(self) -> JobSpec:
        if self.optimizer == "adam" and (self.momentum or self.nesterov):
            raise ValueError(
                "momentum: Adam keeps its own moments; momentum and nesterov are SGD's"
            )
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: Nesterov momentum needs momentum > 0")
        if self.strategy == "fednova" and (self.optimizer != "sgd" or self.nesterov):
            raise ValueError(
                "optimizer: FedNova normalizes heavy-ball SGD's steps; use sgd without nesterov"
            )
        sampled = self.clients_per_round is not None or self.fraction is not None
        if self.strategy == "scaffold" and sampled and "population" not in self.strategy_options:
            raise ValueError(
                "strategy_options: SCAFFOLD with sampled clients moves c by |S|/N of the mean "
                "change; give the federation's size N as population"
            )
        return self

    @model_validator(mode="after")
    def _secagg_consistent(self) -> JobSpec:
        if not self.secure_aggregation:
            return self
        problems = {
            "secagg_clip_norm": self._secagg_clip_problem(),
            "compression": "secure aggregation sets the update's bytes itself; use none"
            if self.compression != "none"
            else None,
            "strategy": _secagg_strategy_problem(self.strategy),
            "update_norm_bound": "a masked update cannot be checked; clients clip to "
            "secagg_clip_norm"
            if self.update_norm_bound is not None
            else None,
            "dp_noise_seed": "with secure aggregation each client draws its noise share in "
            "secret; a seed would make the noise known"
            if self.dp_noise_seed is not None and self.dp_noise_multiplier is not None
            else None,
            "secagg_max_weight": "with weighting = examples, secure aggregation needs the "
            "largest weight a client may claim"
            if self.weighting == "examples" and self.secagg_max_weight is None
            else None,
        }
        for setting, problem in problems.items():
            if problem is not None:
                raise ValueError(f"{setting}: {problem}")
        return self

    def _secagg_clip_problem(self) -> str | None:
        if self.dp_noise_multiplier is None:
            if self.secagg_clip_norm is None:
                return "secure aggregation needs the clipping norm C of an update"
            return None
        if self.secagg_clip_norm not in (None, self.dp_clip_norm):
            return "with DP-FedAvg, clients clip to dp_clip_norm: give one of the two"
        return None

    @model_validator(mode="after")
    def _sampling_consistent(self) -> JobSpec:
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError("clients_per_round: give clients_per_round or fraction, not both")
        if self.clients_per_round is not None and self.clients_per_round < self.min_clients:
            raise ValueError(
                f"clients_per_round: {self.clients_per_round} is below min_clients "
                f"{self.min_clients}, so no round could complete"
            )
        return self


def job_field(name: str, *, default: Any) -> Any:
    """Return JobSpec's field ``name`` with another default (description and bounds kept)."""
    field: FieldInfo = JobSpec.model_fields[name]
    return FieldInfo.merge_field_infos(field, default=default)


def _secagg_strategy_problem(strategy: str) -> str | None:
    """Why ``strategy`` cannot run on the masked sum alone, or None when it can."""
    if getattr(STRATEGIES[strategy].build, "needs_all_updates", False):
        return f"{strategy} needs each update; secure aggregation gives only the sum"
    if strategy == "scaffold":
        return (
            "scaffold sends each update's control-variate change beside the model; secure "
            "aggregation masks the model's values only"
        )
    if strategy == "fednova":
        return (
            "fednova weighs each update by its own local steps; secure aggregation masks "
            "updates of one declared weight"
        )
    return None
