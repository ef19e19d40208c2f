"""vLLM 0.32 adapter: Token Recycling as a ``custom_class`` speculative proposer (V1 model runner).

Usage (offline or ``vllm serve --speculative-config``), with ``DECLAB_PLUGINS`` including ``token_recycling``::

    speculative_config={"method": "custom_class",
                        "model": "declab.plugins.token_recycling.TokenRecyclingProposer",
                        "num_speculative_tokens": 6}

Engine-wide parameters (``successors``, ``mode``, ``template``, ``stop_at_unseen``) come from
``additional_config={"declab": {"token_recycling": {...}}}`` (or the deprecated ``DECLAB_TOKEN_RECYCLING`` JSON;
defaults in ``spec.py``). Per step the proposer

1. takes the target logits of the step (the model's ``compute_logits`` is wrapped on the *instance* in
   ``load_model``: no class patching) and, with the verified draft tokens the runner hands over through the
   ``runner_feeds_proposer`` patch, writes ``M[input token of row j] <- top-k(logits_j)`` for every verified
   position, draft positions included (paper Sec. 3 update);
2. drafts, per request, from the last committed token:

   * ``mode="chain"`` (default): the rank-0 chain of ``M`` (the paper tree's main branch), up to
     ``num_speculative_tokens`` tokens, verified by vLLM's own rejection sampler;
   * ``mode="tree"`` (stage 2, CPU): the whole static tree in BFS order (``num_speculative_tokens`` = the
     template's 80 draft nodes) for every request ``tree_verifiable`` accepts (greedy, nothing that changes or
     reports logits), verified whole by the ``tree_verification`` patches; other requests get the tree's main
     branch as a chain, verified by vLLM's rejection sampler.

The matrix lives as long as the engine (shared by all requests, "hot start" across queries, as in the paper).
Chains are verified by vLLM's own rejection sampler, so greedy output is token-identical to plain decoding and
sampling is distribution-preserving (on CPU only with the ``cpu_expand_kernel`` patch, applied when the plugin is
selected). Trees are verified greedily (``core.longest_accepted_path``), which is token-identical to plain greedy
decoding too (tested through the engine).
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch

from declab.integrations.sdk import apply_patches, runtime
from declab.plugins.token_recycling.core import AdjacencyMatrix, best_chains, build_draft_tree, PAPER_TREE
from declab.plugins.token_recycling.spec import SPEC, TREE_PATCHES

TREE_TEMPLATES = {"paper": PAPER_TREE}  # names as in spec.TREE_TEMPLATES

logger = logging.getLogger(__name__)

# Optional path: proposer statistics are written there as JSON. The generic ``runtime.PROPOSER_STATS_ENV``
# (``DECLAB_PROPOSER_STATS``, set by ``declab bench spec``) takes precedence.
STATS_ENV = "DECLAB_TOKEN_RECYCLING_STATS"
# Counters ``declab_bench_reset`` zeroes (the others describe the configuration or count since start-up).
PHASE_COUNTERS = ("propose_calls", "propose_seconds", "rows_updated")


def tree_verifiable(params) -> bool:
    """Whether greedy tree verification of the raw logits is exactly what vLLM would sample for these params."""
    return (
        params is not None
        and params.temperature < 1e-5  # vLLM's greedy threshold (_SAMPLING_EPS)
        and params.logprobs is None
        and params.presence_penalty == 0.0 and params.frequency_penalty == 0.0 and params.repetition_penalty == 1.0
        and not params.logit_bias and not params.allowed_token_ids and not params.bad_words
        and params.min_tokens == 0 and params.structured_outputs is None and not params.extra_args
    )


def _check_tree_engine(vllm_config) -> None:
    """Tree mode runs on vLLM's CPU attention backend only, in the cache layout the tree patch reads."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        raise ValueError("token_recycling tree mode patches vLLM's CPU attention backend and runs on CPU only; "
                         "use mode 'chain' on GPU")
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from declab.patches.tree_verification import check_cpu_cache_layout

    model = vllm_config.model_config
    cache = vllm_config.cache_config
    if str(cache.cache_dtype) != "auto":
        raise ValueError(f"token_recycling tree mode needs an unquantized KV cache, got {cache.cache_dtype!r}")
    isa = _get_attn_isa(model.dtype, cache.block_size, model.get_head_size(), cache.cache_dtype)
    check_cpu_cache_layout(isa, head_size=model.get_head_size(), block_size=cache.block_size)


def engine_config(vllm_config=None) -> dict:
    """Validated engine-wide settings (``additional_config["declab"]["token_recycling"]``, or the deprecated
    ``DECLAB_TOKEN_RECYCLING`` JSON), defaults filled."""
    return runtime.engine_settings(SPEC, getattr(vllm_config, "additional_config", None))


class TokenRecyclingProposer:
    def __init__(self, vllm_config) -> None:
        runtime.require_selected(SPEC.name, "Token Recycling as the speculative proposer")
        config = engine_config(vllm_config)
        self.k = int(vllm_config.speculative_config.num_speculative_tokens)
        self.tree = config["mode"] == "tree"
        self.template = TREE_TEMPLATES[config["template"]] if self.tree else None
        if self.tree:
            if self.k != self.template.num_draft_nodes:
                raise ValueError(
                    f"num_speculative_tokens must be {self.template.num_draft_nodes} for token_recycling in tree mode "
                    f"(the draft nodes of template {config['template']!r}), got {self.k}"
                )
            _check_tree_engine(vllm_config)
        else:
            max_k = SPEC.proposer.max_speculative_tokens
            if not 1 <= self.k <= max_k:
                raise ValueError(f"num_speculative_tokens must be in 1..{max_k} for token_recycling, got {self.k}")
        self.stop_at_unseen = config["stop_at_unseen"]
        self.matrix = AdjacencyMatrix(vllm_config.model_config.get_vocab_size(), k=config["successors"])
        if self.tree and self.template.max_rank >= self.matrix.k:
            raise ValueError(f"template {config['template']!r} needs successors >= {self.template.max_rank + 1}, "
                             f"got {self.matrix.k}")
        apply_patches(SPEC.worker_patches + (TREE_PATCHES if self.tree else ()))
        self._logits: torch.Tensor | None = None  # target logits of the current step
        self._verified_drafts: list[list[int]] | None = None  # per row, the drafts verified this step
        self._runner = None  # set by the runner_feeds_proposer patch each step
        # Tree mode: request ids drafted as trees by the last propose (read by the tree_inputs patch next step).
        self._tree_requests: set[str] = set()
        self._stats_path = runtime.proposer_stats_path() or os.environ.get(STATS_ENV) or None
        self.stats = {"propose_calls": 0, "propose_seconds": 0.0, "rows_updated": 0,
                      "matrix_bytes": self.matrix.nbytes, "successors": self.matrix.k, "chain_len": self.k,
                      "mode": config["mode"], "tree_drafts": 0, "chain_drafts": 0}
        logger.info("Token Recycling: matrix %s x %d (%.2f MB), %s", self.matrix.vocab_size, self.matrix.k,
                    self.matrix.nbytes / 1e6,
                    f"tree {self.template!r}" if self.tree else f"chain length {self.k}")

    # -- hooks ---------------------------------------------------------------------------------------------------

    def load_model(self, target_model) -> None:
        """Called with the *target* model (required on CPU). Capture its logits at every step."""
        original = target_model.compute_logits

        def compute_logits(hidden_states, *args, **kwargs):
            logits = original(hidden_states, *args, **kwargs)
            self._logits = logits
            return logits

        target_model.compute_logits = compute_logits

    def declab_before_propose(self, runner, spec_decode_metadata) -> None:
        """Called by the ``runner_feeds_proposer`` patch right before ``propose``."""
        self._runner = runner
        if spec_decode_metadata is None:
            self._verified_drafts = None
            return
        flat = spec_decode_metadata.draft_token_ids.tolist()
        drafts, start = [], 0
        for n in spec_decode_metadata.num_draft_tokens:
            drafts.append(flat[start : start + n])
            start += n
        self._verified_drafts = drafts

    def declab_tree_parents(self, req_id: str) -> tuple[int, ...] | None:
        """For the ``tree_inputs`` patch: the parents of the tree drafted for ``req_id`` (root first), or None."""
        return self.template.parents if req_id in self._tree_requests else None

    # -- per step ------------------------------------------------------------------------------------------------

    def _recycle(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu) -> None:
        """M[token fed at row j] <- top-k(logits_j) for every position the target just computed."""
        logits, self._logits = self._logits, None
        if logits is None:
            return
        inputs: list[int] = []
        for i, new in enumerate(sampled_token_ids):
            drafts = self._verified_drafts[i] if self._verified_drafts is not None else []
            if not new:  # partial prefill chunk or discarded row: its logits row carries nothing to learn
                inputs.extend([-1] * (1 + len(drafts)))
                continue
            before = int(num_tokens_no_spec[i]) - len(new)  # sequence length before this step's tokens
            inputs.append(int(token_ids_cpu[i, before - 1]))
            inputs.extend(drafts)
        if len(inputs) != logits.shape[0]:
            logger.warning("Token Recycling: %d logits rows for %d inputs; step not recycled", logits.shape[0],
                           len(inputs))
            return
        self.stats["rows_updated"] += self.matrix.update(torch.tensor(inputs), logits)

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray,
                token_ids_cpu: np.ndarray, slot_mappings=None) -> list[list[int]]:
        t0 = time.perf_counter()
        self._recycle(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)
        active = [i for i, new in enumerate(sampled_token_ids) if new]
        drafts: list[list[int]] = [[] for _ in sampled_token_ids]
        roots = {i: int(token_ids_cpu[i, int(num_tokens_no_spec[i]) - 1]) for i in active}
        tree_rows = self._tree_rows(active) if self.tree else []
        tree_row_set = set(tree_rows)
        self._tree_requests = {self._runner.input_batch.req_ids[i] for i in tree_rows}
        for i in tree_rows:
            tokens, _ = build_draft_tree(self.matrix, roots[i], self.template)
            drafts[i] = tokens[1:].tolist()
        chain_rows = [i for i in active if i not in tree_row_set]
        if chain_rows:
            # Tree mode drafts a chain for requests a tree cannot serve: the tree's main branch.
            length = self.template.main_branch_length if self.tree else self.k
            chains = best_chains(self.matrix, [roots[i] for i in chain_rows], length)
            if self.stop_at_unseen:
                # Row r of `feeders` holds the token each draft was read from; stop before an unwritten row.
                feeders = torch.cat([torch.tensor([roots[i] for i in chain_rows]).unsqueeze(1), chains[:, :-1]], dim=1)
                ok = self.matrix.seen[feeders].int().cumprod(dim=1).sum(dim=1).tolist()
            else:
                ok = [length] * len(chain_rows)
            for row, i in enumerate(chain_rows):
                drafts[i] = chains[row, : ok[row]].tolist()
        self.stats["tree_drafts"] += len(tree_rows)
        self.stats["chain_drafts"] += len(chain_rows)
        self.stats["propose_calls"] += 1
        self.stats["propose_seconds"] += time.perf_counter() - t0
        if self._stats_path and self.stats["propose_calls"] % 16 == 0:
            self.write_stats()
        return drafts

    def _tree_rows(self, active: list[int]) -> list[int]:
        """Rows whose request may be verified as a tree: greedy, nothing that changes or reports its logits."""
        batch, requests = self._runner.input_batch, self._runner.requests
        return [i for i in active if tree_verifiable(requests[batch.req_ids[i]].sampling_params)]

    # -- benchmark hooks (``declab bench spec``'s worker calls them between phases) ----------------------------

    def declab_bench_reset(self) -> None:
        """Cold start: the adjacency matrix back to zeros, the per-phase counters to 0."""
        self.matrix.reset()
        for key in PHASE_COUNTERS:
            self.stats[key] = type(self.stats[key])(0)

    def declab_bench_memory(self) -> dict:
        """Bytes of the proposer's own state (the matrix and its seen flags)."""
        return {"proposer_bytes": int(self.matrix.nbytes_total), "matrix_bytes": int(self.matrix.nbytes),
                "seen_rows": int(self.matrix.num_seen), "what": "adjacency matrix |V| x k (+ seen flags)"}

    def write_stats(self) -> None:
        stats = dict(self.stats, seen_rows=self.matrix.num_seen)
        if self.tree:
            from declab.patches.tree_verification import ACTIVE

            stats.update(verified_trees=ACTIVE.verified_trees, relocated_paths=ACTIVE.relocated_paths)
        with open(self._stats_path, "w") as f:
            json.dump(stats, f)
