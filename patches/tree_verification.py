"""Verify a whole draft tree per request in vLLM 0.32's V1 runner on CPU (Token Recycling, stage 2).

Why: vLLM 0.32 verifies one draft *chain* per request: tree attention and ``speculative_token_tree`` were removed,
positions are ``num_computed_tokens + arange``, the CPU attention kernel is causal only, and the rejection sampler
compares draft ``i`` with the target after draft ``i - 1``. A tree drafter (Token Recycling's 80-node static tree)
has no hook to change any of that.

How: the drafter sends the tree in BFS order as an ordinary draft list (so the scheduler, the KV allocation and
the slot mapping are vLLM's own: node ``i`` gets the cache slot of position ``context + i``) and answers
``declab_tree_parents(req_id)`` with the tree's parent indices (root first) for the requests it drafted as trees.
Three small patches then treat those requests as trees, and only those:

1. ``tree_inputs`` wraps ``GPUModelRunner._prepare_inputs``. After vLLM prepared the step, the rotary positions of
   each tree request's merged sequence become ``context + depth`` (the slot mapping was already computed from the
   sequential positions), and the step's tree requests are published in ``ACTIVE``.
2. ``tree_attention_cpu`` wraps ``CPUAttentionBackendImpl.forward``. After the C++ kernel, the rows of each tree
   request are recomputed with the tree mask over the context read back from the paged cache
   (``tree_attention.tree_attention``), and the layer's keys and values of those rows are kept for step 3.
3. ``tree_verifier`` wraps ``RejectionSampler.forward``. Each tree request is verified greedily
   (``core.longest_accepted_path`` on the argmax of its logits rows); its output row becomes the accepted path's
   tokens plus the bonus token, so the scheduler commits them as accepted drafts. The kept keys and values of the
   accepted nodes are then rewritten, with vLLM's own cache writer, to the slots of positions
   ``context + 1 .. context + a`` in every layer.

Only greedy requests without logits-changing parameters may be drafted as trees: greedy tree verification of
the raw logits is then exactly what vanilla greedy decoding computes. The drafter sends other requests a chain,
which the unchanged rejection sampler verifies. ``check_cpu_cache_layout`` runs at start-up and fails loudly if
vLLM's CPU cache layout is not the one ``tree_attention.paged_context`` reads.

vLLM version: 0.32.0 (``v1/worker/gpu_model_runner.py::_prepare_inputs``, ``v1/attention/backends/cpu_attn.py::
CPUAttentionBackendImpl.forward``, ``v1/sample/rejection_sampler.py::RejectionSampler.forward``; CPU, V1 runner,
synchronous scheduling, which the CPU platform forces).

Removal plan: when vLLM brings back tree drafts (an RFC for a common proposer interface, #36219, and the removed
``speculative_token_tree``), send the tree through that and delete this module. Until then, check the three
wrapped functions on each vLLM bump; ``tests/test_token_recycling_engine.py`` (tree mode, token-identical to
vanilla) tells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from declab.patches import DeclabPatch
from declab.plugins.token_recycling.core import longest_accepted_path
from declab.plugins.token_recycling.tree_attention import paged_context, relocation, tree_attention, tree_depths


@dataclass
class TreeRequest:
    row: int  # batch row
    query_start: int  # index of the root in the step's flattened tokens
    context: int  # committed tokens before the root (the root's position)
    parents: list[int]  # merged sequence, root first: 1 + the drafts vLLM scheduled (a BFS prefix of the tree)


@dataclass
class TreeStep:
    requests: list[TreeRequest]
    num_tokens: int  # tokens of the step: a forward pass of another size (a dummy run) is not this step
    # per attention layer: (impl, layer, kv_cache, keys, values, slots) of the tree rows, kept for relocation
    kept: list[tuple[Any, Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


class _Active:
    """The tree step being executed by this worker process (one runner per process), and counters."""

    step: TreeStep | None = None
    verified_trees: int = 0  # tree requests verified
    relocated_paths: int = 0  # accepted paths that left the tree's rank-0 branch (their KV had to move)


ACTIVE = _Active()


def _key_value_views(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's CPU split of ``[blocks, kv_heads, block_size, 2 * head_size]`` into its key and value caches."""
    blocks, heads, block_size, _ = kv_cache.shape
    return kv_cache.view(blocks, heads, 2 * block_size, -1).chunk(2, dim=2)


def check_cpu_cache_layout(isa: str, num_kv_heads: int = 2, head_size: int = 64, block_size: int = 32) -> None:
    """Write known keys and values with vLLM's CPU cache writer and read them back with ``paged_context``."""
    from vllm import _custom_ops as ops

    gen = torch.Generator().manual_seed(0)
    cache = torch.zeros(3, num_kv_heads, block_size, 2 * head_size)
    key_cache, value_cache = _key_value_views(cache)
    length = block_size + 5
    keys = torch.randn(length, num_kv_heads, head_size, generator=gen)
    values = torch.randn(length, num_kv_heads, head_size, generator=gen)
    block_ids = torch.tensor([2, 0, 1])
    slots = torch.cat([2 * block_size + torch.arange(block_size), torch.arange(5)])
    ops.cpu_attn_reshape_and_cache(keys, values, key_cache, value_cache, slots, isa)
    got_k, got_v = paged_context(cache, block_ids, length)
    if not (torch.equal(got_k, keys) and torch.equal(got_v, values)):
        raise ValueError(
            f"Token Recycling tree mode reads the paged KV cache in vLLM 0.32's CPU 'vec' layout; this engine's "
            f"CPU attention (isa={isa!r}) stores it differently. Use mode 'chain'."
        )


@lru_cache(maxsize=64)
def _depths(parents: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(tree_depths(parents))


class TreeInputsPatch(DeclabPatch):
    name = "tree_inputs"
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target._prepare_inputs

        def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
            result = original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)
            ACTIVE.step = None
            tree_parents = getattr(getattr(self, "drafter", None), "declab_tree_parents", None)
            if tree_parents is None or not scheduler_output.scheduled_spec_decode_tokens:
                return result
            batch = self.input_batch
            requests = []
            for req_id, drafts in scheduler_output.scheduled_spec_decode_tokens.items():
                parents = tree_parents(req_id)
                row = batch.req_id_to_index[req_id]
                n = len(drafts) + 1
                if parents is None or not drafts or int(num_scheduled_tokens[row]) != n:
                    continue
                parents = list(parents[:n])  # vLLM may schedule fewer drafts: a BFS prefix is still a tree
                start = int(self.query_start_loc.np[row])
                context = int(batch.num_computed_tokens_cpu[row])
                self.positions[start : start + n] = context + _depths(tuple(parents)).to(self.positions.dtype)
                requests.append(TreeRequest(row=row, query_start=start, context=context, parents=parents))
            if requests:
                ACTIVE.step = TreeStep(requests=requests,
                                       num_tokens=int(scheduler_output.total_num_scheduled_tokens))
            return result

        _prepare_inputs.__wrapped__ = original
        return {"_prepare_inputs": _prepare_inputs}


class TreeAttentionCpuPatch(DeclabPatch):
    name = "tree_attention_cpu"
    target = "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target.forward

        def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
            result = original(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
            step = ACTIVE.step
            if (step is None or attn_metadata is None or key is None
                    or attn_metadata.num_actual_tokens != step.num_tokens or self.attn_type != "decoder"):
                return result
            for req in step.requests:
                rows = slice(req.query_start, req.query_start + len(req.parents))
                ctx_k, ctx_v = paged_context(kv_cache, attn_metadata.block_table[req.row], req.context)
                keys = torch.cat([ctx_k.to(key.dtype), key[rows]])
                values = torch.cat([ctx_v.to(value.dtype), value[rows]])
                output[rows] = tree_attention(query[rows], keys, values, req.parents, self.scale).to(output.dtype)
                step.kept.append((self, layer, kv_cache, key[rows].clone(), value[rows].clone(),
                                  attn_metadata.slot_mapping[rows].clone()))
            return result

        forward.__wrapped__ = original
        return {"forward": forward}


class TreeVerifierPatch(DeclabPatch):
    name = "tree_verifier"
    target = "vllm.v1.sample.rejection_sampler:RejectionSampler"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target.forward

        def forward(self, metadata, draft_probs, logits, sampling_metadata, *args, **kwargs):
            step, ACTIVE.step = ACTIVE.step, None
            if step is None:
                return original(self, metadata, draft_probs, logits, sampling_metadata, *args, **kwargs)
            # Argmax before vLLM's sampler runs: it may process logits in place.
            cu_sampled = metadata.cu_num_sampled_tokens.tolist()
            cu_drafts = metadata.cu_num_draft_tokens.tolist()
            verdicts = []
            for req in step.requests:
                n = len(req.parents)
                first = cu_sampled[req.row] - n
                argmax = logits[first : first + n].argmax(dim=-1).tolist()
                drafts = metadata.draft_token_ids[cu_drafts[req.row] - (n - 1) : cu_drafts[req.row]].tolist()
                path = longest_accepted_path([-1] + drafts, req.parents, argmax)
                verdicts.append((req, path, [drafts[i - 1] for i in path[1:]] + [argmax[path[-1]]]))
            out = original(self, metadata, draft_probs, logits, sampling_metadata, *args, **kwargs)
            sampled = out.sampled_token_ids
            for req, path, tokens in verdicts:
                sampled[req.row].fill_(-1)  # vLLM's PLACEHOLDER_TOKEN_ID
                sampled[req.row, : len(tokens)] = torch.tensor(tokens, dtype=sampled.dtype)
            _relocate_accepted(step, verdicts)
            return out

        forward.__wrapped__ = original
        return {"forward": forward}


def _relocate_accepted(step: TreeStep, verdicts) -> None:
    """Rewrite the KV entries of accepted nodes to the slots of their committed positions, in every layer."""
    from vllm import _custom_ops as ops

    moves = [relocation(path) for _, path, _ in verdicts]  # per request in step order: (src rows, dst rows)
    ACTIVE.verified_trees += len(moves)
    ACTIVE.relocated_paths += sum(1 for src, _ in moves if src)
    if not any(src for src, _ in moves):
        return
    per_layer = len(step.requests)
    for i, (impl, layer, kv_cache, keys, values, slots) in enumerate(step.kept):
        src, dst = moves[i % per_layer]
        if not src:
            continue
        key_cache, value_cache = _key_value_views(kv_cache)
        ops.cpu_attn_reshape_and_cache(keys[src], values[src], key_cache, value_cache, slots[dst], layer.isa,
                                       k_scale=layer._k_scale_float, v_scale=layer._v_scale_float,
                                       kv_cache_dtype=impl.kv_cache_dtype)
