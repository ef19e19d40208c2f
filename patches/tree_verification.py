"""The tree-verification seam: verify a whole draft tree per request in vLLM 0.32's V1 runner on CPU.

Why: vLLM 0.32 verifies one draft *chain* per request: tree attention and ``speculative_token_tree`` were removed,
positions are ``num_computed_tokens + arange``, the CPU attention kernel is causal only, and the rejection sampler
compares draft ``i`` with the target after draft ``i - 1``. A proposer that drafts trees (a static BFS tree, a
multi-candidate draft) has no hook to change any of that.

How: the proposer (a ``declab.integrations.sdk.proposer.DeclabProposer`` that returned ``DraftTree`` drafts) sends
each tree in BFS order as an ordinary draft list, so the scheduler, the KV allocation and the slot mapping are
vLLM's own: node ``i`` gets the cache slot of position ``context + i``. ``drafter.tree_draft(req_id)`` gives the
tree (parent indices, root first; draft probabilities and how the children were drawn) for the requests it drafted
as trees. Three small patches then treat those requests as trees, and only those (shared state, statistics and
verifier listeners: ``declab.integrations.sdk.tree_verification``; the tree math: ``declab.integrations.sdk.trees``
and ``declab.integrations.sdk.tree_sampling``):

1. ``tree_inputs`` wraps ``GPUModelRunner._prepare_inputs``. After vLLM prepared the step, the rotary positions of
   each tree request's merged sequence become ``context + depth`` (the slot mapping was already computed from the
   sequential positions), and the step's tree requests are published in ``SEAM.step``, each with the subscribed
   ``TreeVerifier`` that accepts its sampling parameters.
2. ``tree_attention_cpu`` wraps ``CPUAttentionBackendImpl.forward``. After the C++ kernel, the rows of each tree
   request are recomputed with the tree mask over the context read back from the paged cache
   (``trees.tree_attention``), and the layer's keys and values of those rows are kept for step 3.
3. ``tree_verifier`` wraps ``RejectionSampler.forward``. Each tree request's verifier (greedy:
   ``trees.longest_accepted_path`` on the argmax of its logits rows; sampled: ``tree_sampling.verify_tree``)
   chooses the accepted path before vLLM's sampler runs; the request's output row becomes the accepted path's
   tokens plus the token drawn after it, so the scheduler commits them as accepted drafts. vLLM's sampler still
   runs on the whole batch; the random generators of seeded tree requests are put back as they were after it, so
   only the tree verifier draws from them. The kept keys and values of the accepted nodes are then rewritten,
   with vLLM's own cache writer, to the slots of positions ``context + 1 .. context + a`` in every layer.

A proposer drafts a tree only for requests a subscribed verifier accepts (``DeclabProposer.tree_verifiable``; the
built-in verifiers accept greedy and sampled requests whose logits nothing but temperature / top-k / top-p / min-p
changes and nothing reports); other requests get chains, which the unchanged rejection sampler verifies.
``check_tree_engine`` (SDK) runs at start-up and fails loudly off the CPU backend or if vLLM's CPU cache layout is
not the one ``trees.paged_context`` reads.

vLLM version: 0.32.0 (``v1/worker/gpu_model_runner.py::_prepare_inputs``, ``v1/attention/backends/cpu_attn.py::
CPUAttentionBackendImpl.forward``, ``v1/sample/rejection_sampler.py::RejectionSampler.forward``; CPU, V1 runner,
synchronous scheduling, which the CPU platform forces).

Removal plan: when vLLM brings back tree drafts (an RFC for a common proposer interface, #36219, and the removed
``speculative_token_tree``), send the tree through that and delete this module. Until then, check the three
wrapped functions on each vLLM bump; the engine tests of tree mode (token-identical to vanilla) tell.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from declab.integrations.sdk.tree_verification import SEAM, TreeRequest, TreeStep
from declab.integrations.sdk.trees import cpu_key_value_views, paged_context, relocation, tree_attention, tree_depths
from declab.integrations.sdk import DeclabPatch
from declab.patches.seeded_chunked_prefill_cpu import generator_states_kept


@lru_cache(maxsize=64)
def _depths(parents: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(tree_depths(parents))


class TreeInputsPatch(DeclabPatch):
    name = "tree_inputs"
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from declab.integrations.sdk.proposer import DeclabProposer

        original = target._prepare_inputs

        def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
            result = original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)
            SEAM.step = None
            drafter = getattr(self, "drafter", None)
            if not isinstance(drafter, DeclabProposer) or not scheduler_output.scheduled_spec_decode_tokens:
                return result
            batch = self.input_batch
            requests = []
            for req_id, drafts in scheduler_output.scheduled_spec_decode_tokens.items():
                tree = drafter.tree_draft(req_id)
                row = batch.req_id_to_index[req_id]
                n = len(drafts) + 1
                if tree is None or not drafts or int(num_scheduled_tokens[row]) != n:
                    continue
                # A tree left from an earlier step: vLLM zero-fills the drafts without calling the proposer when a
                # row nears max_model_len (``_input_fits_in_drafter``); those drafts are a chain.
                if list(drafts) != tree.draft_tokens()[: len(drafts)]:
                    continue
                params = self.requests[req_id].sampling_params
                verifier = SEAM.verifier_for(params)
                if verifier is None:
                    raise RuntimeError(f"{type(drafter).__name__} drafted a tree for request {req_id!r}, which no "
                                       "tree verifier accepts (check DeclabProposer.tree_verifiable first)")
                parents = list(tree.parents[:n])  # vLLM may schedule fewer drafts: a BFS prefix is still a tree
                start = int(self.query_start_loc.np[row])
                context = int(batch.num_computed_tokens_cpu[row])
                self.positions[start : start + n] = context + _depths(tuple(parents)).to(self.positions.dtype)
                requests.append(TreeRequest(row=row, query_start=start, context=context, parents=parents,
                                            verifier=verifier, tree=tree, params=params))
            if requests:
                SEAM.step = TreeStep(requests=requests, num_tokens=int(scheduler_output.total_num_scheduled_tokens))
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
            step = SEAM.step
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
            step, SEAM.step = SEAM.step, None
            if step is None:
                return original(self, metadata, draft_probs, logits, sampling_metadata, *args, **kwargs)
            # Verdicts before vLLM's sampler runs: it may process logits in place.
            cu_sampled = metadata.cu_num_sampled_tokens.tolist()
            cu_drafts = metadata.cu_num_draft_tokens.tolist()
            verdicts = []
            for req in step.requests:
                n = len(req.parents)
                first = cu_sampled[req.row] - n
                drafts = metadata.draft_token_ids[cu_drafts[req.row] - (n - 1) : cu_drafts[req.row]].tolist()
                path, tokens = req.verifier.verify(req, drafts, logits[first : first + n], sampling_metadata)
                verdicts.append((req, path, tokens))
            # vLLM's sampler draws for every row; the tree rows' seeded generators must advance by the verifiers'
            # draws only (one per committed token), as in plain decoding.
            seeded = [req.row for req in step.requests if req.row in sampling_metadata.generators]
            with generator_states_kept(sampling_metadata.generators, seeded):
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
    SEAM.stats.verified_trees += len(moves)
    SEAM.stats.relocated_paths += sum(1 for src, _ in moves if src)
    if not any(src for src, _ in moves):
        return
    per_layer = len(step.requests)
    for i, (impl, layer, kv_cache, keys, values, slots) in enumerate(step.kept):
        src, dst = moves[i % per_layer]
        if not src:
            continue
        key_cache, value_cache = cpu_key_value_views(kv_cache)
        ops.cpu_attn_reshape_and_cache(keys[src], values[src], key_cache, value_cache, slots[dst], layer.isa,
                                       k_scale=layer._k_scale_float, v_scale=layer._v_scale_float,
                                       kv_cache_dtype=impl.kv_cache_dtype)
