"""The base class of declab's draft-model proposers: a ``DeclabProposer`` that runs its own ``DraftModel``.

Each step, for every request that committed tokens, the proposer

1. builds the draft's view of the request (``draft_context``: by default every committed token; RAPID replaces the
   prompt by a shortened one), syncs the request's ``DraftCache`` to it (``DraftCache.sync``: rejected drafts are
   cut off, newly committed tokens are encoded, all requests in one packed ``DraftModel.forward``);
2. drafts greedily (the draft's argmax) one position at a time for the rows still drafting, asking the subclass
   after each drafted token whether the row goes on (``continue_drafting``: PEARL's windows, SpecDec++'s predicted
   rejection). A row never drafts more than ``num_speculative_tokens`` nor past the draft's or the target's
   context. The last drafted token is not encoded (it is encoded next step if the target accepts it).

Drafts travel as plain chains without draft probabilities, so vLLM's rejection sampler verifies them as it verifies
n-gram drafts: greedy requests are token-identical to plain decoding, sampled requests keep the target distribution
(a draft token ``x`` is accepted with probability ``p(x)``, a rejection resamples from ``p`` without ``x``).

Statistics (``self.stats``, written to ``runtime.proposer_stats_path()`` for ``declab bench spec``):
``draft_forwards`` (sequential ``DraftModel.forward`` calls, catch-up included: what a GPU projection charges),
``drafted_tokens``, ``draft_rows``, ``propose_calls``, ``propose_seconds``, ``draft_cache_bytes`` (peak).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from declab.integrations.models import draft_label, draft_names, resolve_draft_model
from declab.integrations.sdk.draft_model import DraftCache, DraftModel, DraftOutput
from declab.integrations.sdk.draft_settings import DRAFT_MODEL_ENV
from declab.integrations.sdk.proposer import DeclabProposer, TargetStep

__all__ = ["DraftModelProposer", "DraftRow"]

logger = logging.getLogger(__name__)



@dataclass
class DraftRow:
    """A batch row to draft for: its index, request, the draft's context and the most tokens it may draft."""

    row: int
    req_id: str
    context: list[int]
    budget: int


class DraftModelProposer(DeclabProposer):
    """Subclass with ``spec`` (whose settings include ``draft_settings.DRAFT_MODEL_PARAM``) and ``selected_as``;
    override ``continue_drafting`` / ``draft_context`` / ``on_request_*`` (or ``draft``, built from
    ``rows_to_draft`` and ``draft_chains``) as the paper needs; call
    ``super().__init__`` first and ``self.open_seams()`` last."""

    def __init__(self, vllm_config: Any) -> None:
        super().__init__(vllm_config)
        path = resolve_draft_model(self.settings.get("draft_model"))
        if not path:
            raise ValueError(f"draft_model: {self.spec.name} needs a draft model folder; set "
                             f"additional_config={{'declab': {{'{self.spec.name}': {{'draft_model': PATH}}}}}} "
                             f"or {DRAFT_MODEL_ENV} (the named drafts {', '.join(draft_names())} are made from "
                             "../shared/fixtures/draft-5m, which is not there)")
        self.draft_model = DraftModel.from_pretrained(path)
        target_vocab = int(vllm_config.model_config.get_vocab_size())
        if self.draft_model.config.vocab_size != target_vocab:
            raise ValueError(f"draft_model: the draft's vocabulary ({self.draft_model.config.vocab_size}) is not the "
                             f"target's ({target_vocab}); the draft must share the target's tokenizer")
        self.k = self.num_speculative_tokens
        if self.k < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1 for {self.spec.name}, got {self.k}")
        self.max_target_len = int(vllm_config.model_config.max_model_len)
        self.caches: dict[str, DraftCache] = {}
        self.init_stats(("draft_forwards", "drafted_tokens", "draft_rows"), draft_cache_bytes=0, draft_model=path,
                        draft_name=draft_label(path),
                        draft_parameters=self.draft_model.num_parameters, num_speculative_tokens=self.k)
        logger.info("%s: draft %s (%.2fM parameters), up to %d tokens per step", self.spec.name, path,
                    self.draft_model.num_parameters / 1e6, self.k)

    # -- what subclasses override ----------------------------------------------------------------------------------

    def draft_context(self, req_id: str, committed: np.ndarray) -> list[int]:
        """The tokens the draft reads for this request (default: every committed token, prompt included)."""
        return committed.tolist()

    def draft_anchor_positions(self, req_id: str) -> list[int]:
        """The rotary positions of the first tokens of the request's draft context when they are not 0, 1, ...
        (``DraftCache.anchor_positions``; asked once, when the request's draft cache is made). Default: none."""
        return []

    def continue_drafting(self, req_ids: list[str], position: int, out: DraftOutput,
                          tokens: torch.Tensor) -> torch.Tensor:
        """After each row of ``req_ids`` drafted ``tokens`` at ``position`` (0-based) from ``out`` (the draft's
        logits and hidden states there): a bool per row, True to draft one more token. Default: always."""
        return torch.ones(len(req_ids), dtype=torch.bool)

    # -- request bookkeeping -------------------------------------------------------------------------------------

    def cache(self, req_id: str) -> DraftCache:
        """The request's draft cache (made on first use)."""
        cache = self.caches.get(req_id)
        if cache is None:
            cache = self.caches[req_id] = self.draft_model.new_cache(self.draft_anchor_positions(req_id))
        return cache

    def on_request_finish(self, req_id: str) -> None:
        self.caches.pop(req_id, None)

    # -- drafting ------------------------------------------------------------------------------------------------

    def draft(self, step: TargetStep) -> list[list[int]]:
        started = time.perf_counter()
        drafts: list[list[int]] = [[] for _ in step.req_ids]
        rows = self.rows_to_draft(step)
        if rows:
            req_ids = [r.req_id for r in rows]
            chains = self.draft_chains(req_ids, [r.context for r in rows], [r.budget for r in rows])
            for r, chain in zip(rows, chains):
                drafts[r.row] = chain
        self.count_propose(started)
        return drafts

    def rows_to_draft(self, step: TargetStep) -> list[DraftRow]:
        """The batch rows that get a draft this step: requests that committed tokens, have room for one more token in
        the target's and the draft's context and, with ``cut_drafts_at_max_tokens``, a use for one before their
        ``max_tokens``."""
        rows = []
        draft_limit = self.draft_model.config.max_position_embeddings
        for i, (req_id, new) in enumerate(zip(step.req_ids, step.sampled_token_ids)):
            if not new or req_id is None:
                continue
            if self.cut_drafts_at_max_tokens and self.draft_room(step, i) == 0:
                continue  # nothing drafted could be used (a tree's nodes are cut to the room after drafting)
            n = int(step.num_tokens_no_spec[i])
            context = self.draft_context(req_id, step.token_ids_cpu[i, :n])
            # The first drafted token sits at the position after the context's last one.
            budget = min(self.k, self.max_target_len - n - 1, draft_limit - self.cache(req_id).position(len(context)))
            if budget >= 1:
                rows.append(DraftRow(i, req_id, context, budget))
        return rows

    def draft_chains(self, req_ids: list[str], contexts: list[list[int]], budgets: list[int]) -> list[list[int]]:
        """Greedy chains of at most ``budgets[j]`` tokens after ``contexts[j]`` (``continue_drafting`` may stop a
        row earlier), all rows in one packed draft forward per position."""
        caches = [self.cache(r) for r in req_ids]
        pending = []
        for cache, context in zip(caches, contexts):
            todo = cache.sync(context)
            if not todo:  # the cache already holds everything: re-encode the last token to get its logits
                cache.truncate(len(context) - 1)
                todo = context[-1:]
            pending.append(todo)
        out = self.draft_model.forward(caches, pending)
        self.stats["draft_forwards"] += 1
        chains: list[list[int]] = [[] for _ in req_ids]
        live = list(range(len(req_ids)))  # indexes into req_ids of rows still drafting
        position = 0
        while True:
            tokens = out.logits.argmax(dim=-1)
            for j, t in zip(live, tokens.tolist()):
                chains[j].append(t)
            go_on = self.continue_drafting([req_ids[j] for j in live], position, out, tokens).tolist()
            position += 1
            keep = [n for n, (j, g) in enumerate(zip(live, go_on)) if g and len(chains[j]) < budgets[j]]
            if not keep:
                break
            live = [live[n] for n in keep]
            out = self.draft_model.forward([caches[j] for j in live], [[chains[j][-1]] for j in live])
            self.stats["draft_forwards"] += 1
        self.stats["drafted_tokens"] += sum(len(c) for c in chains)
        self.stats["draft_rows"] += len(chains)
        self.stats["draft_cache_bytes"] = max(self.stats["draft_cache_bytes"],
                                              sum(c.nbytes for c in self.caches.values()))
        return chains

    # -- benchmark hooks (``declab bench spec``'s worker calls them between phases) ----------------------------

    def declab_bench_reset(self) -> None:
        """Per-phase counters to 0 and the draft caches dropped (the draft has no state across requests)."""
        self.caches.clear()
        self.reset_phase_counters()

    def declab_bench_memory(self) -> dict:
        weights = self.draft_model.nbytes
        caches = sum(c.nbytes for c in self.caches.values())
        return {"proposer_bytes": int(weights + caches), "draft_weights_bytes": int(weights),
                "draft_cache_bytes": int(caches), "what": "draft model weights + per-request draft KV caches"}
