"""LOL's amateur model: decoder-29m plus a small low-rank delta that makes it hallucinate (pure torch, no vLLM).

The paper contrasts the original model with "an amateur model with induced hallucination" (the ICD recipe: the same
model fine-tuned on non-factual data). A full fine-tuned copy of decoder-29m would take another 59 MB, over the
repository's 64 MiB budget, so the amateur ships as a LoRA delta (``amateur/lora.safetensors``, a few hundred KB,
made by ``train_amateur.py``; how and what it measured: ``amateur/MODEL_CARD.md``) added to the base model's weights
when the amateur is loaded: ``W + scale * B @ A`` for every adapted projection (``declab.integrations.sdk.lora_delta``,
the format every shipped delta uses). The merged weights run in the SDK's plain-torch Llama
(``declab.integrations.sdk.draft_model.DraftModel``) next to vLLM, one ``DraftCache`` per request.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from declab.integrations.sdk import lora_delta

DELTA_FILE = Path(__file__).resolve().parent / "amateur" / "lora.safetensors"
# The projections the delta adapts, in every decoder layer (names as in HF Llama checkpoints).
LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")


def read_delta(path: str | Path = DELTA_FILE) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The LoRA factors and the file's metadata (``rank``, ``scale``, ``targets``, ``base``)."""
    return lora_delta.read_delta(path)


def merge_delta(weights: dict[str, torch.Tensor], path: str | Path = DELTA_FILE) -> dict[str, torch.Tensor]:
    """``weights`` (decoder-29m's state dict) with the amateur's delta added (``lora_delta.merge_delta``)."""
    return lora_delta.merge_delta(weights, path)


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
