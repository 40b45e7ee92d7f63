"""Update compression: which tensors a client's update puts on the wire, and back. Pure functions.

The server picks one codec per job and sends it in InitConfig (``JobConfig.compression``). The
wire stays the tensor stream of ``common/codec.py`` (header, raw chunks, checksum); a codec only
changes *which* tensors the update stream carries, so nothing new is framed or unpickled:

    codec   each floating tensor ``w`` of the model goes on the wire as
    none    w                       the trained weights, as today (bit-exact)
    delta   w#delta   model dtype   w - g, g being the round's global model
    fp16    w#delta   float16       w - g cast (clamped to float16's finite range)
    bf16    w#delta   bfloat16      w - g cast
    int8    w#q int8, w#scale f32   w - g = q * scale, symmetric; one scale per tensor, or per
                                    slice along dim 0 for tensors of rank >= 2 (per_channel)
    topk    w#idx int32|int64,      the k = ceil(fraction * numel) entries of w - g (+ residual)
            w#val model dtype       largest in magnitude, indices strictly increasing

Tensors that are not floating point (integer buffers such as BatchNorm's num_batches_tracked,
bool, complex) go as they are under every codec. Every spec on the wire follows from the model's
specs and the setting alone (``wire_specs``), so the server checks an upload's header before
using a byte, as for uncompressed updates; ``decode`` turns the wire tensors back into full
model-shaped weights (``g + delta``) that go through the usual finite check, norm bound and fold.

Lossy codecs compress the *change* from the global model, not the weights: deltas are small and
centred on zero, so a cast or an 8-bit grid loses far less, and the global model (which both
sides hold bit-exactly) carries the bulk. ``delta`` itself is not bit-exact in floating point:
``g + (w - g)`` can differ from ``w`` by its two roundings, at most 1.5 machine epsilon times
``max(|w|, |g|)`` per element (tested); ``none`` is the bit-exact path.

Top-k keeps what it did not send in a client-side residual (error feedback) that is added to the
next round's delta, so over rounds everything gets sent (Stich et al. 2018, Karimireddy et al.
2019). The residual belongs to one client: ``ClientCompressor`` holds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from fedsilo.common.errors import CodecError, ConfigError
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import TensorSpec, check_specs_match, specs_of

Codec = Literal["none", "delta", "fp16", "bf16", "int8", "topk"]
CODECS: tuple[str, ...] = get_args(Codec)
DEFAULT_TOPK_FRACTION = 0.01
INT8_LEVELS = 127  # symmetric: q in [-127, 127]
_INT32_MAX = (1 << 31) - 1
_CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# Suffixes of the wire names; '#' never appears in a state-dict key built from attributes.
DELTA, QUANT, SCALE, INDEX, VALUES = "#delta", "#q", "#scale", "#idx", "#val"


@dataclass(frozen=True)
class Compression:
    """A job's update codec and its options."""

    codec: str = "none"
    topk_fraction: float = DEFAULT_TOPK_FRACTION
    per_channel: bool = False

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"compression: unknown codec {self.codec!r}; one of {CODECS}")
        if not 0.0 < self.topk_fraction <= 1.0:  # also refuses NaN
            raise ConfigError(f"topk_fraction: {self.topk_fraction} is not in (0, 1]")

    def to_proto(self) -> pb.Compression:
        """Return the InitConfig form."""
        return pb.Compression(
            codec=self.codec, topk_fraction=self.topk_fraction, per_channel=self.per_channel
        )

    @classmethod
    def from_proto(cls, message: pb.Compression) -> Compression:
        """Read the InitConfig form; an empty codec is "none". Raise ConfigError if unknown."""
        if not message.codec:
            return cls()
        fraction = message.topk_fraction
        if message.codec != "topk" and fraction == 0.0:  # unset: the option is unused anyway
            fraction = DEFAULT_TOPK_FRACTION
        return cls(message.codec, fraction, message.per_channel)


def is_compressed(tensor_dtype: torch.dtype) -> bool:
    """Whether tensors of this dtype are encoded by the codec (floating) or sent as they are."""
    return tensor_dtype.is_floating_point


def topk_count(numel: int, fraction: float) -> int:
    """Return how many entries top-k sends of a tensor with ``numel`` entries (>= 1 if any)."""
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(fraction * numel)))


def _per_channel(shape: tuple[int, ...], setting: Compression) -> bool:
    return setting.per_channel and len(shape) >= 2


def _tensor_wire_specs(spec: TensorSpec, setting: Compression) -> list[TensorSpec]:
    name, dtype, shape = spec.name, spec.dtype, spec.shape
    codec = setting.codec
    if codec == "none" or not is_compressed(dtype):
        return [spec]
    if codec == "delta":
        return [TensorSpec(name + DELTA, dtype, shape)]
    if codec in _CAST_DTYPES:
        return [TensorSpec(name + DELTA, _CAST_DTYPES[codec], shape)]
    if codec == "int8":
        scale_shape = (shape[0],) if _per_channel(shape, setting) else ()
        return [
            TensorSpec(name + QUANT, torch.int8, shape),
            TensorSpec(name + SCALE, torch.float32, scale_shape),
        ]
    k = topk_count(spec.numel, setting.topk_fraction)
    index_dtype = torch.int32 if spec.numel <= _INT32_MAX else torch.int64
    return [TensorSpec(name + INDEX, index_dtype, (k,)), TensorSpec(name + VALUES, dtype, (k,))]


def wire_specs(
    model_specs: Sequence[TensorSpec],
    setting: Compression,
    extras: Sequence[TensorSpec] = (),
) -> list[TensorSpec]:
    """Return the exact tensor list an update carries on the wire under ``setting``.

    ``extras`` are tensors the job adds after the model's (SCAFFOLD's control-variate change,
    ``common/control_variates.py``): they go as they are under every codec. Raises ConfigError
    when a wire name would collide with another tensor of the update.
    """
    specs = [wire for spec in model_specs for wire in _tensor_wire_specs(spec, setting)]
    specs += extras
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(
            f"compression {setting.codec!r}: wire names {duplicates} collide with the model's own"
        )
    return specs


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype deltas are computed in: float32, or float64 for float64 models."""
    return torch.promote_types(dtype, torch.float32)


def _quantize(delta: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (q int8, scale float32) with delta ~= q * scale and |error| <= scale / 2."""
    if per_channel:
        rows = delta.shape[0]
        width = delta.numel() // rows if rows else 0
        flat = delta.reshape(rows, width)
        amax = flat.abs().amax(dim=1) if width else torch.zeros(rows, dtype=delta.dtype)
    else:
        amax = delta.abs().max() if delta.numel() else torch.zeros(())
    scale = (amax / INT8_LEVELS).to(torch.float32)
    # Quantize with the very scale the server will multiply by; a 0 scale means a 0 slice.
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).to(delta.dtype)
    if per_channel:
        divisor = divisor.reshape(-1, *([1] * (delta.dim() - 1)))
    q = torch.round(delta / divisor).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return q, scale


def _topk(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (indices strictly increasing, values) of the k entries largest in magnitude."""
    flat = delta.reshape(-1)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64), flat[:0]
    _, index = torch.topk(flat.abs(), k, sorted=False)
    index, _ = torch.sort(index)
    return index, flat[index]


def _encode_delta(
    name: str, spec: TensorSpec, delta: torch.Tensor, setting: Compression
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Encode one floating delta; return its wire tensors and the delta the server will see."""
    codec = setting.codec
    if codec == "delta":
        sent = delta.to(spec.dtype)
        return {name + DELTA: sent}, sent.to(delta.dtype)
    if codec in _CAST_DTYPES:
        wire_dtype = _CAST_DTYPES[codec]
        limit = torch.finfo(wire_dtype).max
        sent = delta.clamp(-limit, limit).to(wire_dtype)
        return {name + DELTA: sent}, sent.to(delta.dtype)
    if codec == "int8":
        per_channel = _per_channel(spec.shape, setting)
        q, scale = _quantize(delta, per_channel)
        return {name + QUANT: q, name + SCALE: scale}, _dequantize(q, scale, delta.dtype)
    k = topk_count(spec.numel, setting.topk_fraction)
    index, values = _topk(delta, k)
    index_dtype = torch.int32 if spec.numel <= _INT32_MAX else torch.int64
    values = values.to(spec.dtype)
    seen = torch.zeros(spec.numel, dtype=delta.dtype)
    seen[index] = values.to(delta.dtype)
    return {name + INDEX: index.to(index_dtype), name + VALUES: values}, seen.reshape(spec.shape)


def _dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if scale.dim() == 1:
        return q.to(dtype) * scale.to(dtype).reshape(-1, *([1] * (q.dim() - 1)))
    return q.to(dtype) * scale.to(dtype)


def encode(
    update: Mapping[str, torch.Tensor],
    global_state: Mapping[str, torch.Tensor],
    setting: Compression,
    residual: MutableMapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Return the wire tensors of a trained model ``update`` against the round's global model.

    ``global_state`` needs the floating tensors only (unused for "none"). With ``residual``
    (top-k error feedback), each delta first gets the residual added, and the residual is
    replaced by what was left unsent.
    """
    if setting.codec == "none":
        return dict(update)
    wire: dict[str, torch.Tensor] = {}
    for name, trained in update.items():
        tensor = trained.detach()
        if not is_compressed(tensor.dtype):
            wire[name] = tensor
            continue
        spec = TensorSpec(name, tensor.dtype, tuple(tensor.shape))
        work = _work_dtype(tensor.dtype)
        delta = tensor.to(work) - global_state[name].detach().to(work)
        if residual is not None and name in residual:
            delta += residual[name]
        tensors, seen = _encode_delta(name, spec, delta, setting)
        wire.update(tensors)
        if residual is not None:
            rest = delta - seen
            # A diverged round (NaN/inf weights: refused by the server) must not poison the rounds
            # after it through the residual.
            residual[name] = rest if bool(torch.isfinite(rest).all()) else torch.zeros_like(rest)
    return wire


def decode(
    wire: Mapping[str, torch.Tensor],
    global_state: Mapping[str, torch.Tensor],
    setting: Compression,
    extras: Sequence[TensorSpec] = (),
) -> dict[str, torch.Tensor]:
    """Return the full model-shaped update (``g + delta``) from an update's wire tensors.

    Checks the wire tensors against ``wire_specs`` and rejects hostile content (top-k indices
    out of range, repeated or unordered; a scale that is negative or not finite) with
    CodecError before writing anything. ``extras`` come back as they are, after the model's.
    """
    model_specs = specs_of(global_state)
    check_specs_match(specs_of(wire), wire_specs(model_specs, setting, extras))
    if setting.codec == "none":
        return dict(wire)
    out: dict[str, torch.Tensor] = {}
    for spec in model_specs:
        name = spec.name
        if not is_compressed(spec.dtype):
            out[name] = wire[name]
            continue
        work = _work_dtype(spec.dtype)
        base = global_state[name].to(work)
        out[name] = _apply(name, spec, base, wire, setting).to(spec.dtype)
    out.update((spec.name, wire[spec.name]) for spec in extras)
    return out


def _apply(
    name: str,
    spec: TensorSpec,
    base: torch.Tensor,
    wire: Mapping[str, torch.Tensor],
    setting: Compression,
) -> torch.Tensor:
    """Return ``base`` plus the delta carried by this tensor's wire tensors (new tensor)."""
    codec = setting.codec
    if codec in ("delta", *_CAST_DTYPES):
        return base + wire[name + DELTA].to(base.dtype)
    if codec == "int8":
        scale = wire[name + SCALE]
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise CodecError(f"tensor {name!r}: int8 scale is negative or not finite")
        return base + _dequantize(wire[name + QUANT], scale, base.dtype)
    index = wire[name + INDEX].to(torch.int64)
    if index.numel():
        ordered = bool((index[1:] > index[:-1]).all())
        if not ordered or int(index[0]) < 0 or int(index[-1]) >= spec.numel:
            raise CodecError(
                f"tensor {name!r}: top-k indices must be strictly increasing within "
                f"0..{spec.numel - 1}"
            )
    out = base.clone().reshape(-1)
    out[index] += wire[name + VALUES].to(base.dtype)
    return out.reshape(spec.shape)


class ClientCompressor:
    """One client's side of a codec: the round's global model, and the top-k residual.

    Call ``remember_global`` with the model as received before training (a copy is kept only
    when the codec needs it, so "none" keeps memory at one model), then ``encode`` after.
    The residual lives as long as this object: make a new one when the job or codec changes.
    """

    def __init__(self, setting: Compression) -> None:
        self.setting = setting
        self._global: dict[str, torch.Tensor] | None = None
        self.residual: dict[str, torch.Tensor] | None = {} if setting.codec == "topk" else None

    def remember_global(self, state: Mapping[str, torch.Tensor], copy: bool = True) -> None:
        """Keep a copy of the floating tensors of the global model this round starts from.

        With ``copy=False`` the caller hands over tensors that are already its own copy (the
        client keeps one for its audit anyway), and they are kept as they are.
        """
        if self.setting.codec == "none":
            return
        self._global = {
            name: tensor.detach().to("cpu", copy=copy)
            for name, tensor in state.items()
            if is_compressed(tensor.dtype)
        }

    def encode(self, update: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return the wire tensors of the trained model and drop the global copy."""
        if self.setting.codec == "none":
            return dict(update)
        if self._global is None:
            raise RuntimeError("remember_global() must come before encode()")
        reference, self._global = self._global, None
        return encode(update, reference, self.setting, self.residual)
