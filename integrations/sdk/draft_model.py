"""A small draft language model that a speculative proposer runs itself, with one KV cache per request.

vLLM's own ``draft_model`` method drafts a fixed K tokens for the whole batch in vLLM's KV pool; the draft-model papers
of the reading list change what the draft does per request and per step (PEARL's pre-/post-verify windows,
SpecDec++'s learned stop, RAPID's shortened context, EAD's hand-over), which a ``custom_class`` proposer can only do
with a model of its own. ``DraftModel`` is that model: a Llama-architecture causal LM (HF folder: ``config.json`` +
``model.safetensors``, as ``../shared/fixtures/draft-5m``) in plain torch, so that

* the batch's linear layers run as one packed matrix product over every request's new tokens, while attention runs
  per request over its own cache (requests have different lengths; the draft is small, so the per-request attention
  calls cost less than padding the caches to one tensor would);
* each request owns a ``DraftCache`` (keys, values and the tokens they encode), cut back with ``truncate`` when the
  target rejects drafted tokens (``DraftCache.sync`` finds the common prefix with what the target committed).

The draft's memory lives outside vLLM's KV budget: ``DraftCache.nbytes`` reports it. ``tests/test_draft_model.py``
checks logits and hidden states against transformers' ``LlamaForCausalLM`` on the same folder (the naive reference),
also after truncation and in packed batches.

The draft a plugin uses when its settings name none is ``integrations.models.default_draft_model()``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DraftCache", "DraftConfig", "DraftModel", "DraftOutput", "load_folder_weights", "weights_fingerprint"]


def load_folder_weights(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """An HF model folder's tensors in ``dtype``: ``model.safetensors``, or every shard ``model-*.safetensors``
    (decoder-29m is stored in five)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else sorted(
        folder.glob("model-*-of-*.safetensors"))
    if not (folder / "config.json").is_file() or not files:
        raise ValueError(f"draft_model: {str(folder)!r} is not a model folder (needs config.json and "
                         "model.safetensors or its shards)")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update({k: v.to(dtype) for k, v in load_file(str(file)).items()})
    return weights


def weights_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """A short hash of a model's weights (names, shapes and float32 values, in name order): what a component trained
    on one draft's internals (SpecDec++'s acceptance head reads its hidden states) records, so that a different
    draft is refused instead of silently misread. A folder and its re-saved or merged copy hash alike."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().to(torch.float32).contiguous()
        digest.update(f"{name}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class DraftConfig:
    """The fields of an HF Llama ``config.json`` the forward pass needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    @classmethod
    def from_file(cls, path: Path) -> "DraftConfig":
        raw = json.loads(path.read_text())
        arch = raw.get("architectures") or []
        if raw.get("model_type") != "llama" or (arch and arch[0] != "LlamaForCausalLM"):
            raise ValueError(f"draft_model: {path.parent} is not a Llama causal LM (model_type "
                             f"{raw.get('model_type')!r}, architectures {arch})")
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"draft_model: rope_type {rope.get('rope_type')!r} is not supported (only 'default')")
        heads = int(raw["num_attention_heads"])
        return cls(
            vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]), num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads, num_key_value_heads=int(raw.get("num_key_value_heads", heads)),
            head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        )


class DraftCache:
    """One request's keys and values per layer (``[kv_heads, capacity, head_dim]``, grown by doubling) and the
    tokens they encode, in order.

    Rotary positions: slot ``i`` is encoded at position ``i`` unless ``anchor_positions`` says otherwise: the
    positions of the first slots (increasing), the slots after them continuing one by one from the last (RAPID's
    retrieved chunks kept where they stood in the prompt)."""

    def __init__(self, config: DraftConfig, dtype: torch.dtype, anchor_positions: Sequence[int] = ()) -> None:
        self._shape = (config.num_key_value_heads, config.head_dim)
        self._layers = config.num_hidden_layers
        self._dtype = dtype
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.tokens: list[int] = []
        anchors = [int(p) for p in anchor_positions]
        if any(b <= a for a, b in zip(anchors, anchors[1:])) or (anchors and anchors[0] < 0):
            raise ValueError("DraftCache: anchor_positions must be increasing and >= 0")
        self.anchor_positions = anchors

    def __len__(self) -> int:
        return len(self.tokens)

    def position(self, slot: int) -> int:
        """The rotary position of cache slot ``slot``."""
        anchors = self.anchor_positions
        if slot < len(anchors):
            return anchors[slot]
        return slot if not anchors else anchors[-1] + 1 + slot - len(anchors)

    def positions(self, start: int, n: int) -> torch.Tensor:
        """The rotary positions of slots ``start .. start + n - 1``."""
        if not self.anchor_positions:
            return torch.arange(start, start + n)
        return torch.tensor([self.position(s) for s in range(start, start + n)], dtype=torch.long)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def truncate(self, n: int) -> None:
        """Forget everything from position ``n`` on (the storage is kept for reuse)."""
        del self.tokens[n:]

    def sync(self, tokens: Sequence[int]) -> list[int]:
        """Cut the cache back to its longest common prefix with ``tokens`` and return the tokens it still has to
        encode (what the target committed since, or what replaced rejected drafts)."""
        tokens = list(tokens)
        limit = min(len(self.tokens), len(tokens))
        if self.tokens[:limit] == tokens[:limit]:  # the usual case, compared in C: only the tail changed
            n = limit
        else:
            n = 0
            while self.tokens[n] == tokens[n]:
                n += 1
        self.truncate(n)
        return list(tokens[n:])

    def _reserve(self, n: int) -> None:
        cap = self.keys[0].shape[1] if self.keys else 0
        if n <= cap:
            return
        new_cap = max(n, 2 * cap, 64)
        kvh, hd = self._shape
        used = len(self.tokens)
        for store in (self.keys, self.values):
            for i in range(self._layers):
                grown = torch.empty(kvh, new_cap, hd, dtype=self._dtype)
                if store and used:
                    grown[:, :used] = store[i][:, :used]
                if len(store) == self._layers:
                    store[i] = grown
                else:
                    store.append(grown)


@dataclass
class DraftOutput:
    """Per request of a ``DraftModel.forward`` call: the logits and the final (normed) hidden state of its last new
    token."""

    logits: torch.Tensor  # [B, vocab] float32
    hidden: torch.Tensor  # [B, hidden]
    # With ``forward(exit_layer=k)``: the early-exit logits of the last new token, its residual stream after k
    # decoder layers through the final norm and the vocabulary projection (DoLa's "premature layer"; LOL's lower
    # layer); None otherwise.
    exit_logits: torch.Tensor | None = None  # [B, vocab] float32


class DraftModel:
    """A Llama causal LM in plain torch (inference only, CPU or any torch device)."""

    def __init__(self, config: DraftConfig, weights: dict[str, torch.Tensor], *, path: str = "") -> None:
        self.config, self.path = config, path
        c = config

        def w(name: str) -> torch.Tensor:
            if name not in weights:
                raise ValueError(f"draft_model: weight {name!r} missing in {path or 'the checkpoint'}")
            return weights[name]

        self.embed = w("model.embed_tokens.weight")
        self.lm_head = self.embed if c.tie_word_embeddings else w("lm_head.weight")
        # [hidden, vocab] contiguous: the vocabulary projection of one row is the draft's largest matrix product,
        # and BLAS runs it about 1.7x faster on this layout than on the transposed embedding view.
        self._lm_head_t = self.lm_head.T.contiguous()
        self.norm = w("model.norm.weight")
        self.layers = []
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat([w(p + "self_attn.q_proj.weight"), w(p + "self_attn.k_proj.weight"),
                             w(p + "self_attn.v_proj.weight")])
            gate_up = torch.cat([w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")])
            self.layers.append((w(p + "input_layernorm.weight"), qkv, w(p + "self_attn.o_proj.weight"),
                                w(p + "post_attention_layernorm.weight"), gate_up, w(p + "mlp.down_proj.weight")))
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        angles = torch.outer(torch.arange(c.max_position_embeddings, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self._cos, self._sin = angles.cos().to(self.embed.dtype), angles.sin().to(self.embed.dtype)
        self.dtype = self.embed.dtype

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> "DraftModel":
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ValueError(f"draft_model: {str(folder)!r} is not a model folder (needs config.json)")
        config = DraftConfig.from_file(folder / "config.json")  # refuses a non-Llama before reading weights
        return cls(config, load_folder_weights(folder, dtype), path=str(folder))

    @property
    def num_parameters(self) -> int:
        tensors = [self.embed, self.norm, *(t for layer in self.layers for t in layer)]
        if self.lm_head is not self.embed:
            tensors.append(self.lm_head)
        return sum(t.numel() for t in tensors)

    @property
    def nbytes(self) -> int:
        """Bytes of the weights as held (the transposed vocabulary projection included)."""
        tensors = [self.embed, self.norm, self._lm_head_t, *(t for layer in self.layers for t in layer)]
        if self.lm_head is not self.embed:
            tensors.append(self.lm_head)
        return sum(t.numel() * t.element_size() for t in tensors)

    def new_cache(self, anchor_positions: Sequence[int] = ()) -> DraftCache:
        return DraftCache(self.config, self.dtype, anchor_positions)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)).to(x.dtype) * weight

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x [T, heads, head_dim]; HF Llama's rotate_half convention.
        cos, sin = self._cos[pos].unsqueeze(1), self._sin[pos].unsqueeze(1)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """One request's attention: ``q`` [n, heads, hd] at positions start..start+n-1 over ``keys`` / ``values``
        [kv_heads, start+n, hd]; query i sees positions <= start + i, or the keys ``mask`` [n, start+n] (bool)
        allows. Written as two batched matrix products with the query heads grouped by their key-value head: for
        the draft's tiny shapes this is several times faster on CPU than ``scaled_dot_product_attention`` with
        ``enable_gqa``."""
        n, heads, hd = q.shape
        kvh = keys.shape[0]
        group = heads // kvh
        qg = q.permute(1, 0, 2).reshape(kvh, group * n, hd)  # head h uses key-value head h // group
        scores = torch.bmm(qg, keys.transpose(1, 2)) * (1.0 / math.sqrt(hd))
        if mask is None and n > 1:
            mask = torch.ones(n, start + n, dtype=torch.bool).tril(diagonal=start)
        if mask is not None:
            scores = scores.view(kvh, group, n, -1).masked_fill(~mask, float("-inf")).view(kvh, group * n, -1)
        out = torch.bmm(scores.softmax(dim=-1), values)  # [kvh, group * n, hd]
        return out.view(heads, n, hd).permute(1, 0, 2)

    @torch.inference_mode()
    def forward(self, caches: Sequence[DraftCache], new_tokens: Sequence[Sequence[int]],
                exit_layer: int | None = None) -> DraftOutput:
        """Encode each request's ``new_tokens`` after what its cache holds (appending them to the cache) and return
        the logits and hidden state of each request's last new token. Every request needs at least one new token.
        ``exit_layer`` (1 .. layers-1): also return the early-exit logits after that many layers."""
        layers = self.config.num_hidden_layers
        if exit_layer is not None and not 1 <= exit_layer < layers:
            raise ValueError(f"DraftModel.forward: exit_layer must be in 1..{layers - 1}, got {exit_layer}")
        x, bounds, exit_x = self._encode(caches, new_tokens, None, None, exit_layer)
        last = torch.tensor([b - 1 for b in bounds[1:]])
        hidden = self._rms(x[last], self.norm)
        exit_logits = None if exit_x is None else (self._rms(exit_x[last], self.norm) @ self._lm_head_t).float()
        return DraftOutput(logits=(hidden @ self._lm_head_t).float(), hidden=hidden, exit_logits=exit_logits)

    @torch.inference_mode()
    def forward_nodes(self, caches: Sequence[DraftCache], new_tokens: Sequence[Sequence[int]],
                      positions: Sequence[Sequence[int]], masks: Sequence[torch.Tensor]) -> DraftOutput:
        """Tree drafting: encode each request's ``new_tokens`` (nodes of a draft tree) at the rotary ``positions``
        given (a node's position is its depth after the context, not its cache slot), each attending to the cache
        slots its row of ``masks[r]`` (bool ``[n_r, len(cache) + n_r]``: the context, its ancestors, itself)
        allows, and return the logits and hidden states of *every* new token ``[sum n_r, ...]``, request by
        request. The nodes are appended to the caches like other tokens; cut them off with ``truncate``."""
        x, _, _ = self._encode(caches, new_tokens, positions, masks)
        hidden = self._rms(x, self.norm)
        return DraftOutput(logits=(hidden @ self._lm_head_t).float(), hidden=hidden)

    def _encode(self, caches, new_tokens, positions, masks,
                exit_layer: int | None = None) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
        """The decoder layers over the packed new tokens (written to the caches): final pre-norm states, the row
        bounds of each request, and the residual stream after ``exit_layer`` layers (None without one)."""
        c = self.config
        counts = [len(t) for t in new_tokens]
        if not counts or min(counts) < 1:
            raise ValueError("DraftModel.forward: every request needs at least one new token")
        starts = [len(cache) for cache in caches]
        flat = torch.tensor([t for toks in new_tokens for t in toks], dtype=torch.long)
        if positions is None:
            pos = torch.cat([cache.positions(s, n) for cache, s, n in zip(caches, starts, counts)])
        else:
            pos = torch.tensor([p for ps in positions for p in ps], dtype=torch.long)
        if int(pos.max()) >= c.max_position_embeddings:
            raise ValueError(f"DraftModel.forward: past the draft's {c.max_position_embeddings} positions")
        masks = masks if masks is not None else [None] * len(caches)
        for cache, s, n in zip(caches, starts, counts):
            cache._reserve(s + n)
        heads, kvh, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q_size, kv_size = heads * hd, kvh * hd
        x = self.embed[flat]
        bounds = [0]
        for n in counts:
            bounds.append(bounds[-1] + n)
        exit_x = None
        for li, (ln1, qkv_w, o_w, ln2, gate_up_w, down_w) in enumerate(self.layers):
            h = self._rms(x, ln1)
            qkv = h @ qkv_w.T
            q = self._rope(qkv[:, :q_size].view(-1, heads, hd), pos)
            k = self._rope(qkv[:, q_size:q_size + kv_size].view(-1, kvh, hd), pos)
            v = qkv[:, q_size + kv_size:].view(-1, kvh, hd)
            attn = torch.empty(x.shape[0], heads, hd, dtype=x.dtype)
            for r, cache in enumerate(caches):
                a, b, s = bounds[r], bounds[r + 1], starts[r]
                cache.keys[li][:, s:s + b - a] = k[a:b].transpose(0, 1)
                cache.values[li][:, s:s + b - a] = v[a:b].transpose(0, 1)
                keys, values = cache.keys[li][:, :s + b - a], cache.values[li][:, :s + b - a]
                attn[a:b] = self._attend(q[a:b], keys, values, s, masks[r])
            x = x + attn.reshape(-1, q_size) @ o_w.T
            h = self._rms(x, ln2)
            gate, up = (h @ gate_up_w.T).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ down_w.T
            if li + 1 == exit_layer:
                exit_x = x
        for cache, toks in zip(caches, new_tokens):
            cache.tokens.extend(int(t) for t in toks)
        return x, bounds, exit_x
