"""SpecDec++'s acceptance-prediction head: P(the draft's token is accepted) from the draft's own state.

SpecDec++ (reading list paper 47) stops drafting when the predicted probability that at least one token of the
current draft will be rejected, ``1 - prod_i p_accept_i``, crosses a threshold. ``p_accept_i`` comes from a small head
on the draft model: here a logistic regression or a one-hidden-layer MLP over

* the draft's final hidden state (after the final RMSNorm) at the position whose logits produced the draft token,
* three features of the draft's softmax there: its max probability, the top-1 minus top-2 margin and its entropy
  (the hidden state determines them, but only through the 8,192-way softmax, which a small head cannot rebuild).

Features are standardised with the training set's mean and standard deviation, stored in the module as buffers, so
a caller passes raw hidden states and probabilities. Greedy drafting is assumed: the drafted token is the argmax of
``draft_probs``, which is what greedy verification accepts exactly when it equals the target's argmax.

The file also records the draft it was trained on (``declab_draft``: its name and ``weights_fingerprint``): the
head reads that draft's hidden states, which another draft does not share, so the proposer refuses a head made for
another draft.

Pure torch + safetensors: the head loads in the proposer without transformers or vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PROB_FEATURES = ("max_prob", "top2_margin", "entropy")


def prob_features(draft_probs: torch.Tensor) -> torch.Tensor:
    """[B, V] softmax -> [B, 3]: max probability, top-1 minus top-2 probability, entropy (nats)."""
    probs = draft_probs.float()
    top2 = probs.topk(2, dim=-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return torch.stack([top2[:, 0], top2[:, 0] - top2[:, 1], entropy], dim=-1)


class AcceptanceHead(torch.nn.Module):
    """Features -> logit of P(draft token accepted). ``mlp_hidden == 0`` is a logistic regression.

    ``use_hidden`` False ignores the hidden state (a head on the probability features only, kept to show what the
    hidden state adds)."""

    def __init__(self, hidden_size: int, mlp_hidden: int = 0, use_hidden: bool = True) -> None:
        super().__init__()
        self.hidden_size, self.mlp_hidden, self.use_hidden = int(hidden_size), int(mlp_hidden), bool(use_hidden)
        # The draft it was trained on: {"name": ..., "fingerprint": draft_model.weights_fingerprint(...)}; None for a
        # head saved without one.
        self.draft: dict | None = None
        n_in = (self.hidden_size if self.use_hidden else 0) + len(PROB_FEATURES)
        self.register_buffer("feature_mean", torch.zeros(n_in))
        self.register_buffer("feature_std", torch.ones(n_in))
        if self.mlp_hidden:
            self.net = torch.nn.Sequential(torch.nn.Linear(n_in, self.mlp_hidden), torch.nn.GELU(),
                                           torch.nn.Linear(self.mlp_hidden, 1))
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(n_in, 1))

    @property
    def n_features(self) -> int:
        return self.feature_mean.numel()

    def features(self, hidden: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
        """Raw (unstandardised) features [B, F] from the draft's hidden state [B, H] and softmax [B, V]."""
        pf = prob_features(draft_probs)
        if not self.use_hidden:
            return pf
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden: expected size {self.hidden_size} in the last dimension, got {hidden.shape[-1]}")
        return torch.cat([hidden.float(), pf], dim=-1)

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Fix the feature mean / std from the training features [N, F] (before training)."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Raw features [B, F] -> logit [B]."""
        return self.net((features - self.feature_mean) / self.feature_std).squeeze(-1)

    @torch.no_grad()
    def accept_prob(self, hidden: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
        """P(accept) [B] of the draft's argmax token, from hidden [B, H] and the draft's softmax [B, V]."""
        return torch.sigmoid(self(self.features(hidden, draft_probs)))

    def config(self) -> dict:
        return {"hidden_size": self.hidden_size, "mlp_hidden": self.mlp_hidden, "use_hidden": self.use_hidden,
                "prob_features": list(PROB_FEATURES)}

    def save(self, path: str | Path) -> None:
        """One safetensors file; the config rides in its metadata (``declab_acceptance_head``), the draft in
        ``declab_draft``."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"declab_acceptance_head": json.dumps(self.config())}
        if self.draft is not None:
            meta["declab_draft"] = json.dumps(self.draft)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "AcceptanceHead":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        meta = metadata.get("declab_acceptance_head")
        if meta is None:
            raise ValueError(f"path: {path} is not an acceptance head (no declab_acceptance_head metadata)")
        config = json.loads(meta)
        if tuple(config.get("prob_features", PROB_FEATURES)) != PROB_FEATURES:
            raise ValueError(f"path: {path} was trained on features {config['prob_features']}, not {PROB_FEATURES}")
        head = cls(config["hidden_size"], config["mlp_hidden"], config["use_hidden"])
        head.load_state_dict(load_file(str(path)))
        head.draft = json.loads(metadata["declab_draft"]) if "declab_draft" in metadata else None
        return head.eval()
