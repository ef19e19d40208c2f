"""Low-rank weight deltas: a model fine-tuned from a base, shipped as the few hundred KB that differ from it.

The repository's tracked files must stay under 64 MiB and decoder-29m alone takes 59 MB, so a model derived from a
base model (LOL's amateur from decoder-29m, the long-context draft from draft-5m) ships as one safetensors file:

* LoRA factors per adapted projection, ``A`` [rank, in] and ``B`` [out, rank], merged as ``W + scale * B @ A``
  (keys ``model.layers.{i}.{target}.lora_A`` / ``.lora_B``, HF Llama names);
* optionally whole tensors that replace the base's (small ones, e.g. RMSNorm weights; keys are the weight names);
* metadata: ``rank``, ``scale``, ``targets``, ``base`` and whatever its training script records.

Training side: ``add_adapters`` wraps a model's projections in ``LoRALinear`` (base frozen, ``B`` starts at zero so
training starts from the base model), ``save_delta`` writes the file, ``load_into_adapters`` resumes from one;
loading side: ``merge_delta``.
"""

from __future__ import annotations

from pathlib import Path

import torch

LORA_A, LORA_B = ".lora_A", ".lora_B"


def factor_key(layer: int, target: str, part: str) -> str:
    """Name of one LoRA factor in a delta file: ``part`` is ``"A"`` ([rank, in]) or ``"B"`` ([out, rank])."""
    return f"model.layers.{layer}.{target}.lora_{part}"


def read_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The delta's tensors (factors and whole replacements) and its metadata."""
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, meta


def merge_delta(weights: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """``weights`` (an HF Llama state dict) with the delta applied: ``W + scale * B @ A`` per adapted projection, whole
    tensors replaced. A delta made for another model (a missing weight, a shape mismatch) is a ``ValueError``."""
    tensors, meta = read_delta(path)
    scale = float(meta.get("scale", 1.0))
    merged = dict(weights)

    def base_of(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in merged:
            raise ValueError(f"delta {path}: {name} is not a weight of the base model")
        if tuple(merged[name].shape) != shape:
            raise ValueError(f"delta {path}: {name} has shape {tuple(merged[name].shape)}, the delta {shape} "
                             f"(made for another model: {meta.get('base', '?')})")
        return merged[name]

    for key in sorted(tensors):
        if key.endswith(LORA_B):
            continue
        if key.endswith(LORA_A):
            stem = key[: -len(LORA_A)]
            a, b = tensors[key].float(), tensors[stem + LORA_B].float()
            base = base_of(stem + ".weight", (b.shape[0], a.shape[1]))
            merged[stem + ".weight"] = (base.float() + scale * (b @ a)).to(base.dtype)
        else:
            base = base_of(key, tuple(tensors[key].shape))
            merged[key] = tensors[key].to(base.dtype)
    return merged


class LoRALinear(torch.nn.Module):
    """A frozen linear layer plus ``scale * B @ A`` (B starts at zero: training starts from the base model)."""

    def __init__(self, base: torch.nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        self.lora_A = torch.nn.Parameter(torch.randn(rank, base.in_features) / base.in_features ** 0.5)
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)


def add_adapters(model, targets: tuple[str, ...], rank: int, scale: float) -> dict[tuple[int, str], LoRALinear]:
    """Freeze every parameter of an HF Llama ``model`` and wrap ``targets`` (e.g. ``"self_attn.q_proj"``) of every
    decoder layer in a ``LoRALinear``; returns them by (layer, target)."""
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = {}
    for i, layer in enumerate(model.model.layers):
        for target in targets:
            parent_name, attr = target.split(".")
            parent = getattr(layer, parent_name)
            wrapped = LoRALinear(getattr(parent, attr), rank, scale)
            setattr(parent, attr, wrapped)
            adapters[(i, target)] = wrapped
    return adapters


def save_delta(path: str | Path, adapters: dict[tuple[int, str], LoRALinear], meta: dict[str, str],
               whole: dict[str, torch.Tensor] | None = None) -> int:
    """Write the adapters' factors (and ``whole`` tensors) as float16 with ``meta``; returns the parameter count."""
    from safetensors.torch import save_file

    tensors = {}
    for (layer, target), a in adapters.items():
        tensors[factor_key(layer, target, "A")] = a.lora_A.detach().half().contiguous()
        tensors[factor_key(layer, target, "B")] = a.lora_B.detach().half().contiguous()
    for name, t in (whole or {}).items():
        tensors[name] = t.detach().half().contiguous()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={k: str(v) for k, v in meta.items()})
    return sum(t.numel() for t in tensors.values())


def load_into_adapters(path: str | Path, adapters: dict[tuple[int, str], LoRALinear],
                       whole: dict[str, torch.Tensor] | None = None) -> dict[str, str]:
    """Start training from a saved delta instead of from the base: copy its factors into ``adapters`` (same targets
    and rank) and its whole tensors into ``whole`` (parameters by weight name); returns the delta's metadata. A
    delta that does not match (a factor or tensor missing or extra, another shape) is a ``ValueError``."""
    tensors, meta = read_delta(path)
    expected = {factor_key(layer, target, part) for layer, target in adapters for part in ("A", "B")}
    expected |= set(whole or {})
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"delta {path} does not match the adapters: missing {missing[:3]}, extra {extra[:3]}")
    with torch.no_grad():
        for (layer, target), a in adapters.items():
            for part, param in (("A", a.lora_A), ("B", a.lora_B)):
                t = tensors[factor_key(layer, target, part)]
                if t.shape != param.shape:
                    raise ValueError(f"delta {path}: {factor_key(layer, target, part)} has shape "
                                     f"{tuple(t.shape)}, the adapter {tuple(param.shape)}")
                param.copy_(t.to(param.dtype))
        for name, param in (whole or {}).items():
            if tensors[name].shape != param.shape:
                raise ValueError(f"delta {path}: {name} has shape {tuple(tensors[name].shape)}, the model "
                                 f"{tuple(param.shape)}")
            param.copy_(tensors[name].to(param.dtype))
    return meta
