"""The served model as its own draft: its decoder with some sublayers skipped, run on the target's paged KV cache.

Self-speculative proposers that skip layers (SWIFT; Draft & Verify, LayerSkip and Kangaroo are of the same kind) draft
with the target's own weights, so the draft needs no memory of its own: for the context, each kept attention layer
reads the keys and values the target already wrote to vLLM's paged cache. ``TargetLayers`` runs that draft inside a
``custom_class`` proposer's ``propose`` call (after the step, before the next schedule):

* the decoder of a Llama-style model (``model.model.layers[i]`` with ``input_layernorm``, ``self_attn``,
  ``post_attention_layernorm``, ``mlp``; ``model.model.embed_input_ids``, ``model.model.norm``,
  ``model.compute_logits``: Llama, Mistral, Qwen2 and the fixture decoder-29m) written out as the residual stream
  ``r += attn(norm1(r))``, ``r += mlp(norm2(r))`` so that each attention and each MLP sublayer can be skipped
  on its own (sublayer ``2 i`` is layer ``i``'s attention, ``2 i + 1`` its MLP; ``Sublayers``);
* attention through vLLM's own layers and backend: the step builds a ``CommonAttentionMetadata`` over the rows it
  drafts (one query per request, or the last ``w`` committed positions when scoring) with the runner's block table,
  the metadata builders of the runner's attention group, and ``set_forward_context`` with a slot mapping for the
  kept attention layers only.

What it writes: ``forward(..., write_kv=True)`` writes the kept attention layers' keys and values of the drafted
positions into the request's own slots past its committed tokens (the positions the next verification recomputes
and overwrites; no shared prefix-cache block holds them, since vLLM caches full blocks of computed tokens only);
``write_kv=False`` writes nothing (queries at committed positions then attend to the target's own keys and values,
themselves included: what a layer set is scored on). Slots exist only in blocks the scheduler allocated for the
step just run (vLLM reserves no lookahead slots for ``custom_class``): ``free_slots`` says how many positions past
the committed tokens a request can draft.

Limits, refused at construction with the reason: one KV-cache group (no hybrid or sliding-window groups),
one pipeline stage, no tensor parallelism, a model of the shape above.

vLLM version: 0.32.0 (``CommonAttentionMetadata`` fields, ``AttentionGroup.build_metadata``,
``BlockTable.block_table`` / ``num_blocks_per_row``, ``set_forward_context(..., slot_mapping=)``; the hooks note
``vllm-0.32-hooks-next.md`` "Layer-skip self-speculation").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["Sublayers", "TargetLayers"]


@dataclass(frozen=True)
class Sublayers:
    """Which of a decoder's ``2 * num_layers`` sublayers are skipped (``2 i``: layer i's attention, ``2 i + 1``: its
    MLP)."""

    num_layers: int
    skipped: frozenset[int]

    def __post_init__(self) -> None:
        bad = [s for s in self.skipped if not 0 <= s < 2 * self.num_layers]
        if bad:
            raise ValueError(f"sublayers {sorted(bad)} out of range for {self.num_layers} layers "
                             f"(0..{2 * self.num_layers - 1})")

    def attention_kept(self, layer: int) -> bool:
        return 2 * layer not in self.skipped

    def mlp_kept(self, layer: int) -> bool:
        return 2 * layer + 1 not in self.skipped

    @property
    def kept_fraction(self) -> float:
        return 1.0 - len(self.skipped) / (2 * self.num_layers)

    def describe(self) -> dict[str, list[int]]:
        """The skipped layers per kind (what a report shows)."""
        return {"attention": sorted(s // 2 for s in self.skipped if s % 2 == 0),
                "mlp": sorted(s // 2 for s in self.skipped if s % 2 == 1)}


class TargetLayers:
    """The runner's model run with ``Sublayers`` skipped over the runner's paged KV cache (see the module docstring)."""

    def __init__(self, runner: Any) -> None:
        cfg = runner.vllm_config
        if cfg.parallel_config.pipeline_parallel_size != 1 or cfg.parallel_config.tensor_parallel_size != 1:
            raise ValueError("layer skipping runs the target's layers inside the proposer: it needs "
                             "pipeline_parallel_size=1 and tensor_parallel_size=1")
        groups = runner.kv_cache_config.kv_cache_groups
        if len(groups) != 1 or len(runner.attn_groups) != 1:
            raise ValueError(f"layer skipping needs one KV-cache group (the model has {len(groups)}: hybrid or "
                             "sliding-window layers are not supported)")
        model = runner.get_model()
        decoder = getattr(model, "model", None)
        layers = getattr(decoder, "layers", None)
        needed = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
        if (layers is None or not hasattr(decoder, "embed_input_ids") or not hasattr(decoder, "norm")
                or not hasattr(model, "compute_logits")
                or not all(hasattr(layer, n) for layer in layers for n in needed)):
            raise ValueError(f"layer skipping needs a Llama-style decoder (model.layers[i].{{{', '.join(needed)}}}); "
                             f"{type(model).__name__} is not one")
        self.runner = runner
        self.model, self.decoder, self.layers = model, decoder, list(layers)
        self.num_layers = len(self.layers)
        self.layer_names = [layer.self_attn.attn.layer_name for layer in self.layers]
        self.block_table = runner.input_batch.block_table[0]
        self.block_size = int(self.block_table.block_size)
        self.device = runner.device

    def cost_fraction(self, skip: Sublayers) -> float:
        """The share of a full forward's weights a forward with ``skip`` reads: the kept sublayers' matrices plus
        the vocabulary projection, over all layers' plus the projection (the embedding is a lookup in both; norms are
        negligible). Counted from the model's config: vLLM's CPU backend may repack weights out of ``parameters()``.
        On a GPU a decode forward is bound by reading its weights, so this is the draft's cost relative to the
        target's (a projection input; on this CPU the measured ratio is reported beside it)."""
        c = self.runner.vllm_config.model_config.hf_config
        hidden = int(c.hidden_size)
        heads = int(c.num_attention_heads)
        head_dim = int(getattr(c, "head_dim", None) or hidden // heads)
        kv_heads = int(getattr(c, "num_key_value_heads", None) or heads)
        attn = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v
        mlp = 3 * hidden * int(c.intermediate_size)  # gate, up, down
        head = hidden * int(c.vocab_size)
        kept = sum(attn for i in range(self.num_layers) if skip.attention_kept(i)) + sum(
            mlp for i in range(self.num_layers) if skip.mlp_kept(i))
        return (kept + head) / (self.num_layers * (attn + mlp) + head)

    # -- slots ---------------------------------------------------------------------------------------------------

    def free_slots(self, row: int, first_position: int) -> int:
        """Positions from ``first_position`` on that batch ``row`` has allocated slots for."""
        return int(self.block_table.num_blocks_per_row[row]) * self.block_size - first_position

    def _slots(self, rows: np.ndarray, positions: np.ndarray) -> torch.Tensor:
        blocks = self.block_table.block_table.np[rows, positions // self.block_size].astype(np.int64)
        return torch.from_numpy(blocks * self.block_size + positions % self.block_size)

    # -- the forward ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, rows: Sequence[int], tokens: Sequence[Sequence[int]], first_positions: Sequence[int],
                skip: Sublayers, *, write_kv: bool, all_logits: bool = False) -> torch.Tensor:
        """Run ``tokens[r]`` (consecutive positions from ``first_positions[r]``) of batch row ``rows[r]`` through the
        decoder with ``skip`` skipped; return the logits (float32) of each request's last token ``[R, vocab]``, or
        of every token ``[sum len, vocab]`` with ``all_logits``. Every position before ``first_positions[r]`` must
        be in the cache; with ``write_kv`` the new positions' slots must be free (``free_slots``)."""
        from vllm.forward_context import set_forward_context
        from vllm.v1.attention.backend import CommonAttentionMetadata

        if skip.num_layers != self.num_layers:
            raise ValueError(f"a layer set for {skip.num_layers} layers given to a {self.num_layers}-layer model")
        counts = np.array([len(t) for t in tokens], dtype=np.int64)
        starts = np.asarray(first_positions, dtype=np.int64)
        row_ids = np.repeat(np.asarray(rows, dtype=np.int64), counts)
        positions_np = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, counts)])
        num_tokens = int(counts.sum())
        query_start = np.zeros(len(counts) + 1, dtype=np.int32)
        np.cumsum(counts, out=query_start[1:])
        seq_lens = (starts + counts).astype(np.int32)
        slot_mapping = self._slots(row_ids, positions_np).to(self.device)
        positions = torch.from_numpy(positions_np).to(self.device)
        query_start_loc = torch.from_numpy(query_start)
        seq_lens_t = torch.from_numpy(seq_lens)
        block_rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        common = CommonAttentionMetadata(
            query_start_loc=query_start_loc.to(self.device), query_start_loc_cpu=query_start_loc,
            seq_lens=seq_lens_t.to(self.device), seq_lens_cpu_upper_bound=seq_lens_t,
            num_reqs=len(counts), num_actual_tokens=num_tokens, max_query_len=int(counts.max()),
            max_seq_len=int(seq_lens.max()),
            block_table_tensor=self.block_table.block_table.gpu.index_select(0, block_rows.to(self.device)),
            slot_mapping=slot_mapping, causal=True, positions=positions)
        attn_metadata: dict[str, Any] = {}
        for group in self.runner.attn_groups[0]:
            built = group.build_metadata(common)
            for name in group.layer_names:
                attn_metadata[name] = built
        writes = {self.layer_names[i]: slot_mapping for i in range(self.num_layers)
                  if write_kv and skip.attention_kept(i)}
        flat = torch.as_tensor([t for toks in tokens for t in toks], dtype=torch.long, device=self.device)
        with set_forward_context(attn_metadata, self.runner.vllm_config, num_tokens=num_tokens, slot_mapping=writes):
            stream = self.decoder.embed_input_ids(flat)
            for i, layer in enumerate(self.layers):
                if skip.attention_kept(i):
                    stream = stream + layer.self_attn(positions=positions, hidden_states=layer.input_layernorm(stream))
                if skip.mlp_kept(i):
                    stream = stream + layer.mlp(layer.post_attention_layernorm(stream))
            if not all_logits:
                stream = stream[torch.from_numpy(query_start[1:] - 1).to(self.device)]
            logits = self.model.compute_logits(self.decoder.norm(stream))
        return logits.float()
