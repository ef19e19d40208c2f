"""GEAR's KV page codec (Kang et al. 2024, reading-list paper 36) and the plain per-token quantizer it builds on.

A block of ``N`` tokens of one head, ``X`` (``[N, d]``, keys or values), is stored as

* ``S``: per token, the ``k = ceil(outlier_ratio * d)`` entries furthest out (``ceil(k/2)`` largest, the rest
  smallest; GEAR's s/2 % at each end), as (``uint8`` index, ``fp16`` value);
* ``D``: per token, the other entries quantized to ``bits`` (asymmetric min/max over the token's ``d`` entries, scale
  and minimum in ``fp16``; outlier entries excluded from the range);
* ``L = A B``: the best rank-``r`` approximation (SVD) of the residual ``R = X - (D^ with S put back)`` over the
  block, ``A`` ``[N, r]`` stored per token, ``B`` ``[r, d]`` spread over the block's ``N`` tokens.

Keys (``keys = "channel"``, GEAR's default here, as KIVI and GEAR-KIVI quantize them): ``D`` is asymmetric min/max
per *channel* over the block's ``N`` tokens (keys have outlier channels, so one range per token wastes levels on
them; measured on decoder-29m's post-RoPE keys at 4 bits: relative error 0.056 per channel vs 0.103 per token), the
``d`` scales and minima spread over the block's tokens like ``B``, and ``S`` holds, per token, the entries furthest
from their channel's block mean in channel standard deviations. Values stay per token.

Decoded: ``X^ = D^ (S put back) + A B``. ``rank = 0`` and ``outlier_ratio = 0`` with per-token keys is the plain
per-token quantizer (the KIVI-like baseline). At full rank (``r = min(N, d)``) ``A B = R`` up to float32 rounding:
the factors are stored in float32 then (``fp16`` below full rank, as the paper stores them).

Pure torch, no vLLM: ``GearCodec`` is the ``KVPageCodec`` the attention seam calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from declab.integrations.sdk.attention_policy import KVPageCodec

FP16 = torch.float16


@dataclass(frozen=True)
class GearLayout:
    """Where each field of one ``(head, token)`` cell lives: ``[keys part | values part]``, each part the fields
    of ``PART_FIELDS`` in order (bytes)."""

    head_size: int
    block_size: int
    bits: int
    rank: int
    outliers: int
    channel_keys: bool = False  # keys quantized per channel over the block (values always per token)

    def __post_init__(self) -> None:
        if self.bits not in (2, 4, 8):
            raise ValueError(f"bits must be 2, 4 or 8, got {self.bits}")
        if (self.head_size * self.bits) % 8:
            raise ValueError(f"head_size {self.head_size} x bits {self.bits} is not a whole number of bytes")
        if not 0 <= self.rank <= self.full_rank:
            raise ValueError(f"rank must be in [0, {self.full_rank}] (min(block_size, head_size)), got {self.rank}")
        if not 0 <= self.outliers <= self.head_size:
            raise ValueError(f"outliers must be in [0, {self.head_size}], got {self.outliers}")

    @property
    def full_rank(self) -> int:
        return min(self.block_size, self.head_size)

    @property
    def factor_dtype(self) -> torch.dtype:
        return torch.float32 if self.rank == self.full_rank else FP16

    @property
    def basis_share(self) -> int:
        """Entries of ``B`` (``rank * head_size``) each token of the block holds."""
        return math.ceil(self.rank * self.head_size / self.block_size)

    def per_channel(self, part: str) -> bool:
        return self.channel_keys and part == "keys"

    def range_share(self, part: str) -> int:
        """Scales (and minima) each token holds: 1 per token, or the block's ``head_size`` per-channel ones spread
        over its ``block_size`` tokens."""
        return math.ceil(self.head_size / self.block_size) if self.per_channel(part) else 1

    def fields(self, part: str) -> list[tuple[str, torch.dtype, int]]:
        fdt, share = self.factor_dtype, self.range_share(part)
        return [("scale", FP16, share), ("zero", FP16, share), ("outlier_values", FP16, self.outliers),
                ("lowrank_a", fdt, self.rank), ("lowrank_b", fdt, self.basis_share),
                ("codes", torch.uint8, self.head_size * self.bits // 8), ("outlier_index", torch.uint8, self.outliers)]

    def offsets(self, part: str) -> dict[str, tuple[int, int, torch.dtype]]:
        out, at = {}, 0
        for name, dtype, count in self.fields(part):
            size = count * torch.empty(0, dtype=dtype).element_size()
            out[name] = (at, size, dtype)
            at += size
        return out

    def part_bytes(self, part: str) -> int:
        return sum(size for _, size, _ in self.offsets(part).values())

    @property
    def cell_bytes(self) -> int:
        return self.part_bytes("keys") + self.part_bytes("values")


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``uint8`` codes ``[..., d]`` (each < 2**bits) -> ``[..., d * bits / 8]`` bytes, first code in the low bits."""
    per = 8 // bits
    grouped = codes.to(torch.int32).reshape(*codes.shape[:-1], -1, per)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (grouped << shifts).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], -1).to(torch.uint8)


def outlier_positions(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[..., k]`` of the ``ceil(k/2)`` largest and ``k - ceil(k/2)`` smallest entries of each vector."""
    high = (k + 1) // 2
    top = x.topk(high, dim=-1).indices
    if k == high:
        return top
    return torch.cat([top, (-x).topk(k - high, dim=-1).indices], dim=-1)


def channel_outlier_positions(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[..., N, k]`` of each token's ``k`` entries furthest from their channel's mean over the block
    (``x [..., N, d]``), in channel standard deviations: the entries a per-channel range should not stretch to."""
    mean, std = x.mean(-2, keepdim=True), x.std(-2, keepdim=True)
    return ((x - mean).abs() / (std + 1e-6)).topk(k, dim=-1).indices


def quantize(x: torch.Tensor, bits: int, exclude: torch.Tensor | None = None):
    """Per-vector asymmetric quantization of ``x [..., d]``: codes (``uint8``), scale and minimum (``fp16``, the
    rounded values are the ones the codes use). ``exclude``: a mask of entries left out of the range (outliers)."""
    levels = (1 << bits) - 1
    low = x.masked_fill(exclude, math.inf) if exclude is not None else x
    high = x.masked_fill(exclude, -math.inf) if exclude is not None else x
    zero = low.min(-1, keepdim=True).values.to(FP16)
    scale = ((high.max(-1, keepdim=True).values - zero.float()) / levels).to(FP16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((x - zero.float()) / scale.float()).clamp(0, levels).to(torch.uint8)
    return codes, scale, zero


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.float() + zero.float()


class GearCodec(KVPageCodec):
    """``KVPageCodec`` (``declab.integrations.sdk.attention``) storing GEAR-compressed blocks."""

    def __init__(self, layout: GearLayout) -> None:
        self.layout = layout

    def cell_bytes(self) -> int:
        return self.layout.cell_bytes

    def encode(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encode_part(keys, "keys"), self.encode_part(values, "values")], dim=-1)

    def decode(self, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.layout.part_bytes("keys")
        return self.decode_part(pages[..., :split], "keys"), self.decode_part(pages[..., split:], "values")

    def encode_part(self, x: torch.Tensor, part: str = "values") -> torch.Tensor:
        """``x [heads, N, d]`` -> ``[heads, N, part_bytes(part)]`` ``uint8``."""
        lay = self.layout
        heads, n, d = x.shape
        channel = lay.per_channel(part)
        x = x.float()
        fields: dict[str, torch.Tensor] = {}
        exclude = None
        approx_fix = None
        if lay.outliers:
            index = (channel_outlier_positions if channel else outlier_positions)(x, lay.outliers)
            exclude = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, index, True)
            fields["outlier_index"] = index.to(torch.uint8)
            fields["outlier_values"] = x.gather(-1, index).to(FP16)
            approx_fix = (index, fields["outlier_values"].float())
        if channel:  # one range per channel over the block's tokens: quantize the transpose
            codes, scale, zero = quantize(x.transpose(-1, -2), lay.bits,
                                          None if exclude is None else exclude.transpose(-1, -2))
            codes, scale, zero = codes.transpose(-1, -2), scale.transpose(-1, -2), zero.transpose(-1, -2)
            share = lay.range_share(part)
            fields.update(scale=_spread(scale, n, share), zero=_spread(zero, n, share))
        else:
            codes, scale, zero = quantize(x, lay.bits, exclude)
            fields.update(scale=scale, zero=zero)
        fields["codes"] = pack_bits(codes, lay.bits)
        if lay.rank:
            approx = dequantize(codes, scale, zero)
            if approx_fix is not None:
                approx = approx.scatter(-1, *approx_fix)
            a, b = low_rank(x.double() - approx.double(), lay.rank)
            fields["lowrank_a"] = a.to(lay.factor_dtype)
            flat = torch.zeros(heads, n * lay.basis_share, dtype=lay.factor_dtype)
            flat[:, : lay.rank * d] = b.reshape(heads, -1).to(lay.factor_dtype)
            fields["lowrank_b"] = flat.view(heads, n, lay.basis_share)
        out = [fields[name].contiguous().view(torch.uint8) for name, _, count in lay.fields(part) if count]
        return torch.cat(out, dim=-1)

    def decode_part(self, pages: torch.Tensor, part: str = "values") -> torch.Tensor:
        """``[..., heads, N, part_bytes(part)]`` -> ``[..., heads, N, d]`` float32."""
        lay = self.layout
        get = {name: pages[..., at : at + size].contiguous().view(dtype)
               for name, (at, size, dtype) in lay.offsets(part).items() if size}
        scale, zero = get["scale"], get["zero"]
        if lay.per_channel(part):
            scale, zero = _gather(scale, lay.head_size), _gather(zero, lay.head_size)
        x = dequantize(unpack_bits(get["codes"], lay.bits), scale, zero)
        if lay.outliers:
            x = x.scatter(-1, get["outlier_index"].long(), get["outlier_values"].float())
        if lay.rank:
            n, d = pages.shape[-2], lay.head_size
            b = get["lowrank_b"].reshape(*pages.shape[:-2], n * lay.basis_share)[..., : lay.rank * d]
            b = b.reshape(*pages.shape[:-2], lay.rank, d)
            x = (x.double() + get["lowrank_a"].double() @ b.double()).float()
        return x


def _spread(per_channel: torch.Tensor, n: int, share: int) -> torch.Tensor:
    """``[heads, 1, d]`` -> ``[heads, n, share]``: the block's ``d`` values held ``share`` per token (zero-padded)."""
    heads, _, d = per_channel.shape
    flat = torch.zeros(heads, n * share, dtype=per_channel.dtype)
    flat[:, :d] = per_channel.reshape(heads, d)
    return flat.view(heads, n, share)


def _gather(spread: torch.Tensor, d: int) -> torch.Tensor:
    """``[..., n, share]`` -> ``[..., 1, d]`` (inverse of ``_spread``)."""
    *lead, n, share = spread.shape
    return spread.reshape(*lead, n * share)[..., :d].unsqueeze(-2)


def low_rank(residual: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``A [..., N, r]``, ``B [..., r, d]`` of ``residual [..., N, d]`` (truncated SVD).
    At full rank the exact factorization with an identity factor (no SVD rounding)."""
    n, d = residual.shape[-2:]
    if rank == n <= d:
        return torch.eye(n, dtype=residual.dtype).expand(*residual.shape[:-2], n, n), residual
    if rank == d < n:
        return residual, torch.eye(d, dtype=residual.dtype).expand(*residual.shape[:-2], d, d)
    u, s, vh = torch.linalg.svd(residual, full_matrices=False)
    return u[..., :rank] * s[..., None, :rank], vh[..., :rank, :]


def outlier_count(ratio: float, head_size: int) -> int:
    return math.ceil(ratio * head_size - 1e-9) if ratio > 0 else 0


def gear_layout(settings: dict, facts: dict) -> GearLayout:
    return GearLayout(head_size=facts["head_size"], block_size=facts["block_size"], bits=settings["bits"],
                      rank=settings.get("rank", 0), outliers=outlier_count(settings.get("outlier_ratio", 0.0),
                                                                           facts["head_size"]),
                      channel_keys=settings.get("keys", "token") == "channel")


def check_settings(settings: dict, facts: dict, *, plugin: str = "gear") -> None:
    """Start-up check of the settings against the model and the engine (``ValueError`` naming the setting)."""
    where = f"additional_config.declab.{plugin}"
    full = min(facts["block_size"], facts["head_size"])
    if settings.get("rank", 0) > full:
        raise ValueError(f"{where}.rank must be <= {full} (full rank: min(block_size {facts['block_size']}, "
                         f"head_size {facts['head_size']})), got {settings['rank']}")
    if (facts["head_size"] * settings["bits"]) % 8:
        raise ValueError(f"{where}.bits: head_size {facts['head_size']} x {settings['bits']} bits is not whole bytes")


def make_codec(settings: dict, facts: dict) -> GearCodec:
    return GearCodec(gear_layout(settings, facts))
