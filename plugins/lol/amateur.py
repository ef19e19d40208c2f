"""LOL's amateur model: decoder-29m plus a small low-rank delta that makes it hallucinate (pure torch, no vLLM).

The paper contrasts the original model with "an amateur model with induced hallucination" (the ICD recipe: the same
model fine-tuned on non-factual data). A full fine-tuned copy of decoder-29m would take another 59 MB, over the
repository's 64 MiB budget, so the amateur ships as a LoRA delta (``amateur/lora.safetensors``, a few hundred KB,
made by ``train_amateur.py``; how and what it measured: ``amateur/MODEL_CARD.md``) added to the base model's weights
when the amateur is loaded: ``W + scale * B @ A`` for every adapted projection. The merged weights run in the SDK's
plain-torch Llama (``declab.integrations.sdk.draft_model.DraftModel``) next to vLLM, one ``DraftCache`` per request.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DELTA_FILE = Path(__file__).resolve().parent / "amateur" / "lora.safetensors"
# The projections the delta adapts, in every decoder layer (names as in HF Llama checkpoints).
LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")


def delta_key(layer: int, target: str, part: str) -> str:
    """Name of one LoRA factor in the delta file: ``part`` is ``"A"`` ([rank, in]) or ``"B"`` ([out, rank])."""
    return f"model.layers.{layer}.{target}.lora_{part}"


def read_delta(path: str | Path = DELTA_FILE) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The LoRA factors and the file's metadata (``rank``, ``scale``, ``targets``, ``base``)."""
    from safetensors import safe_open

    tensors, meta = {}, {}
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, meta


def merge_delta(weights: dict[str, torch.Tensor], path: str | Path = DELTA_FILE) -> dict[str, torch.Tensor]:
    """``weights`` (an HF Llama state dict) with the delta added: ``W + scale * B @ A`` per adapted projection. A
    delta made for another model (a missing projection, a shape mismatch) is a ``ValueError``."""
    factors, meta = read_delta(path)
    scale = float(meta.get("scale", 1.0))
    merged = dict(weights)
    for key in sorted(k for k in factors if k.endswith(".lora_A")):
        stem = key[: -len(".lora_A")]
        name = stem + ".weight"
        if name not in merged:
            raise ValueError(f"amateur delta {path}: {name} is not a weight of the base model")
        a, b = factors[key].float(), factors[stem + ".lora_B"].float()
        base = merged[name]
        if tuple(base.shape) != (b.shape[0], a.shape[1]):
            raise ValueError(f"amateur delta {path}: {name} has shape {tuple(base.shape)}, the delta "
                             f"{(b.shape[0], a.shape[1])} (made for another model: {meta.get('base', '?')})")
        merged[name] = (base.float() + scale * (b @ a)).to(base.dtype)
    return merged


def load_amateur(base_folder: str | Path, delta: str | Path = DELTA_FILE, dtype: torch.dtype = torch.float32):
    """The amateur as a ``DraftModel``: the base model folder's weights with the delta merged."""
    from declab.integrations.sdk.draft_model import DraftConfig, DraftModel, load_folder_weights

    folder = Path(base_folder)
    config = DraftConfig.from_file(folder / "config.json")
    weights = merge_delta(load_folder_weights(folder, dtype), delta)
    return DraftModel(config, weights, path=f"{folder} + {Path(delta).name}")


def delta_metadata(path: str | Path = DELTA_FILE) -> dict[str, str]:
    return read_delta(path)[1]


def describe(path: str | Path = DELTA_FILE) -> str:
    meta = delta_metadata(path)
    return json.dumps({k: meta[k] for k in sorted(meta)})
