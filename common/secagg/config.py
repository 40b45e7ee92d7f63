"""A job's secure-aggregation settings: one frozen model both sides hold identically."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsilo.common.secagg.plan import ThreatModel

DEFAULT_THREAT = ThreatModel.model_validate({})
NOISE_TAIL = 8.0


class SecAggConfig(BaseModel):
    """Quantization range, threat model and key signing of a job's secure aggregation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clip_norm: float = Field(gt=0.0, allow_inf_nan=False, description="L2 bound C of a delta")
    max_weight: int = Field(ge=1, description="largest weight (examples) a client may claim")
    element_bound: float | None = Field(
        None,
        gt=0.0,
        allow_inf_nan=False,
        description="clamp each element of the clipped delta to +-this (default: clip_norm)",
    )
    threat: ThreatModel = Field(DEFAULT_THREAT, description="what the job assumes of its members")
    allow_unsigned: bool = Field(
        False, description="plaintext mode: keys are not signed, a server can substitute them"
    )
    noise_std: float = Field(
        0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="distributed DP-FedAvg: std of the Gaussian noise each client adds to its "
        "clipped delta before masking (0: none)",
    )

    @model_validator(mode="after")
    def _bound_within_norm(self) -> SecAggConfig:
        if self.element_bound is not None and self.element_bound > self.clip_norm:
            raise ValueError("element_bound above clip_norm clamps nothing; leave it unset")
        return self

    @property
    def bound(self) -> float:
        """Return the largest magnitude an element of a clipped (and noised) delta can have.

        With noise, the default range leaves NOISE_TAIL standard deviations of room, so that
        clamping touches an element with probability below 1e-15.
        """
        if self.element_bound is not None:
            return self.element_bound
        return self.clip_norm + NOISE_TAIL * self.noise_std

    def digest(self) -> bytes:
        """Return SHA-256 of the canonical JSON form (sorted keys): what clients must agree on."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).digest()
