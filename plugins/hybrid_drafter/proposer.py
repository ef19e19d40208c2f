"""vLLM 0.32 adapter: the hybrid drafter as a ``custom_class`` speculative proposer (V1 model runner).

Usage, with ``DECLAB_PLUGINS`` including ``hybrid_drafter``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.hybrid_drafter.HybridProposer",
                        "num_speculative_tokens": 6}
    additional_config={"declab": {"hybrid_drafter": {"min_ngram": 2, "max_ngram": 4}}}   # optional (spec.py)

Per step (inside vLLM's ``propose``, after the runner-to-proposer feed delivered the step):

1. ``on_step``: the target's top-k at every position it just computed are recycled into the shared successor
   matrix and the request's own overlay (``RecycledSuccessors.learn``);
2. ``draft``, per request: its ``ContextIndex`` catches up with the committed tokens; the longest earlier match of
   its suffix drafts up to K tokens (a *context draft*); a request without a match drafts the rank-0 chain of
   recycled successors from its last token (a *recycled draft*), and a context draft shorter than K is continued
   the same way from its last token (``extend``). All recycled chains of the step are read in one batched call.

Why this order: a suffix of two or more tokens that already occurred in the same request (code identifiers,
repeated phrases, text copied from the prompt) predicts a whole run of tokens, while a recycled successor is the
target's top-1 after a single token, from its latest occurrence anywhere; the recycled chain covers the positions
where the request has no such repeat. Both are fixed choices, verified by vLLM's rejection sampler: lossless.
"""

from __future__ import annotations

import time

from declab.integrations.sdk.proposer import DeclabProposer, TargetStep
from declab.plugins.hybrid_drafter.core import ContextIndex, SourceHindsight
from declab.plugins.hybrid_drafter.spec import SPEC
from declab.plugins.shared.recycled_successors import RecycledSuccessors

PHASE_COUNTERS = ("rows_updated", "context_drafts", "context_tokens", "recycled_drafts", "recycled_tokens",
                  "context_bytes_max", "context_requests", "context_bytes_sum")


class HybridProposer(DeclabProposer):
    spec = SPEC
    selected_as = "the hybrid drafter as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        config = self.settings
        self.k = self.chain_length()
        if config["min_ngram"] > config["max_ngram"]:
            raise ValueError(f"hybrid_drafter: min_ngram ({config['min_ngram']}) must be <= max_ngram "
                             f"({config['max_ngram']})")
        self.min_n, self.max_n = config["min_ngram"], config["max_ngram"]
        self.extend = config["extend"]
        self.stop_at_unseen = config["stop_at_unseen"]
        self.recycled = RecycledSuccessors(vllm_config.model_config.get_vocab_size(), config["successors"],
                                           config["overlay_rows"] if config["overlay"] else None)
        self.contexts: dict[str, ContextIndex] = {}
        self.hindsight = SourceHindsight(("context", "recycled", "hybrid")) if config["hindsight"] else None
        self.init_stats(PHASE_COUNTERS)
        self._step_started = 0.0
        self.open_seams()

    # -- per request ---------------------------------------------------------------------------------------------

    def on_request_start(self, req_id: str, params) -> None:
        self.contexts[req_id] = ContextIndex(self.min_n, self.max_n)
        self.recycled.start(req_id)

    def on_request_finish(self, req_id: str) -> None:
        index = self.contexts.pop(req_id, None)
        if index is not None:
            nbytes = index.nbytes
            self.stats["context_requests"] += 1
            self.stats["context_bytes_sum"] += nbytes
            self.stats["context_bytes_max"] = max(self.stats["context_bytes_max"], nbytes)
            if self.hindsight is not None:
                self.hindsight.settle(req_id, index.tokens, final=True)
        self.recycled.finish(req_id)

    # -- per step ------------------------------------------------------------------------------------------------

    def on_step(self, step: TargetStep) -> None:
        self._step_started = time.perf_counter()
        self.stats["rows_updated"] += self.recycled.learn(step)

    def _context(self, step: TargetStep, row: int) -> ContextIndex:
        """The row's request index, caught up with its committed tokens (rebuilt if the history shrank)."""
        req_id = step.req_ids[row]
        index = self.contexts.get(req_id)
        size = int(step.num_tokens_no_spec[row])
        if index is None or len(index) > size:
            index = self.contexts[req_id] = ContextIndex(self.min_n, self.max_n)
        if len(index) < size:
            index.extend(step.token_ids_cpu[row, len(index) : size].tolist())
            if self.hindsight is not None:
                self.hindsight.settle(req_id, index.tokens)
        return index

    def draft(self, step: TargetStep) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in step.sampled_token_ids]
        need: list[tuple[int, int, int]] = []  # (row, root token, tokens wanted) for recycled chains
        for i, new in enumerate(step.sampled_token_ids):
            if not new:
                continue
            index = self._context(step, i)
            _, cont = index.match(self.k)
            if cont:
                drafts[i] = cont
                self.stats["context_drafts"] += 1
                self.stats["context_tokens"] += len(cont)
                if self.extend and len(cont) < self.k:
                    need.append((i, cont[-1], self.k - len(cont)))
            else:
                need.append((i, index.tokens[-1], self.k))
        if need:
            chains = self.recycled.chains([step.req_ids[i] for i, _, _ in need], [root for _, root, _ in need],
                                          max(n for _, _, n in need), self.stop_at_unseen)
            for (i, _, n), chain in zip(need, chains):
                extra = chain[:n]
                if extra and not drafts[i]:
                    self.stats["recycled_drafts"] += 1
                self.stats["recycled_tokens"] += len(extra)
                drafts[i] = drafts[i] + extra
        if self.hindsight is not None:
            self._record_hindsight(step, drafts)
        self.count_propose(self._step_started)
        return drafts

    def _record_hindsight(self, step: TargetStep, drafts: list[list[int]]) -> None:
        """Each source's own candidate for every drafted row (context alone, recycled chain alone, the hybrid's
        draft), for ``SourceHindsight`` to score once the request commits what follows."""
        rows = [i for i, new in enumerate(step.sampled_token_ids) if new]
        if not rows:
            return
        req_ids = [step.req_ids[i] for i in rows]
        recycled = self.recycled.chains(req_ids, [self.contexts[r].tokens[-1] for r in req_ids], self.k,
                                        self.stop_at_unseen)
        for i, req_id, chain in zip(rows, req_ids, recycled):
            index = self.contexts[req_id]
            self.hindsight.record(req_id, len(index), {"context": index.match(self.k)[1], "recycled": chain,
                                                       "hybrid": drafts[i]})

    # -- benchmark hooks (``declab bench spec``'s worker calls them between phases) ----------------------------

    def declab_bench_reset(self) -> None:
        """Cold start: recycled successors back to zeros, counters to 0 (live context indexes stay with their
        requests; each request indexes only its own tokens)."""
        self.recycled.reset()
        self.reset_phase_counters()
        if self.hindsight is not None:
            self.hindsight = SourceHindsight(self.hindsight.sources)

    def declab_bench_memory(self) -> dict:
        live = sum(index.nbytes for index in self.contexts.values())
        done = self.stats["context_requests"]
        recycled = self.recycled.memory()
        return {**recycled, "proposer_bytes": recycled["proposer_bytes"] + live, "context_live_bytes": live,
                "context_bytes_per_request_mean": round(self.stats["context_bytes_sum"] / done) if done else 0,
                "context_bytes_per_request_max": self.stats["context_bytes_max"],
                "what": "recycled successors (matrix |V| x k + per-request overlays) + per-request n-gram index of "
                        "the request's own tokens"}

    def stats_snapshot(self) -> dict:
        hindsight = {f"hindsight_{k}": v for k, v in self.hindsight.totals.items()} if self.hindsight else {}
        return dict(self.stats, seen_rows=self.recycled.matrix.num_seen, **hindsight)
