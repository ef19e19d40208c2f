"""vLLM 0.32 adapter: SWIFT as a ``custom_class`` speculative proposer (V1 model runner).

Usage, with ``DECLAB_PLUGINS`` including ``swift``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.swift.SWIFTProposer",
                        "num_speculative_tokens": 8}

``num_speculative_tokens`` is the longest chain; the confidence stop (``stop_threshold``) ends most chains earlier.
Per ``propose`` call, in the worker, after the target's step:

1. while the layer-set search runs (``layer_set='adaptive'``, ``core.LayerSetSearch``): one candidate set and the
   current best are scored on the last ``context_window`` committed tokens of up to ``search_rows`` requests (one
   parallel pass each, no KV written: ``TargetLayers.forward(write_kv=False)``);
2. every request that committed tokens this step drafts a chain with the best set: one batched forward per draft
   position through the kept sublayers, each writing its keys and values into the request's own slots past the
   committed tokens (the next verification overwrites them), argmax tokens, a request stopping after a token whose
   draft probability is below ``stop_threshold``, or at the end of its allocated blocks.

The drafts are deterministic (point masses), so vLLM's rejection sampler keeps greedy output token-identical and
sampled output distributed as the target's (it accepts a point-mass draft with probability ``p(x)``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from declab.integrations.sdk.layer_skip import Sublayers, TargetLayers
from declab.integrations.sdk.proposer import DeclabProposer, TargetStep
from declab.plugins.swift.core import LayerSetSearch, matchness, skip_count, uniform_skip_set
from declab.plugins.swift.spec import SPEC

PHASE_COUNTERS = ("draft_forwards", "drafted_tokens", "confidence_stops", "block_end_cuts", "search_iterations",
                  "draft_seconds", "search_seconds")


def _parse_sublayers(text: str, num_layers: int) -> frozenset[int]:
    try:
        ids = frozenset(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"declab.swift.skip_sublayers must be comma-separated integers, got {text!r}") from None
    bad = sorted(i for i in ids if not 0 <= i < 2 * num_layers)
    if bad or not ids:
        raise ValueError(f"declab.swift.skip_sublayers: {sorted(bad) or 'no id'} not in 0..{2 * num_layers - 1} "
                         f"(2*i = layer i's attention, 2*i+1 its MLP; the model has {num_layers} layers)")
    return ids


class SWIFTProposer(DeclabProposer):
    spec = SPEC
    selected_as = "SWIFT as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.k = self.chain_length()
        s = self.settings
        self.num_layers = int(vllm_config.model_config.hf_config.num_hidden_layers)
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        if s["skip_sublayers"]:
            fixed = _parse_sublayers(s["skip_sublayers"], self.num_layers)
            self.search = None
        else:
            count = skip_count(self.num_layers, s["skip_ratio"])
            fixed = uniform_skip_set(self.num_layers, count)
            self.search = None if s["layer_set"] == "uniform" else LayerSetSearch(
                self.num_layers, count, seed=s["seed"], bayes_interval=s["bayes_interval"],
                max_iters=s["max_search_iters"], patience=s["search_patience"], target_score=s["target_score"],
                start=fixed)
        self.fixed = fixed
        self.layers: TargetLayers | None = None  # built on the first step (needs the runner)
        # The skipped set and the search's state are added by stats_snapshot (derived, not counted).
        self.init_stats(PHASE_COUNTERS, num_layers=self.num_layers, layer_set=s["layer_set"],
                        stop_threshold=s["stop_threshold"])
        self.open_seams()

    @property
    def skipped(self) -> frozenset[int]:
        return self.search.best if self.search is not None else self.fixed

    # -- the layer-set search ------------------------------------------------------------------------------------

    def _score(self, skipped: frozenset[int], rows: list[int], windows: list[np.ndarray], starts: list[int]) -> float:
        """Matchness of ``skipped`` over the windows: the tokens at ``start .. start+w-1`` predict those after."""
        logits = self.layers.forward(rows, [w[:-1] for w in windows], starts,
                                     Sublayers(self.num_layers, skipped), write_kv=False, all_logits=True)
        return matchness(logits.argmax(-1).cpu().numpy(), np.concatenate([w[1:] for w in windows]))

    def _search_step(self, step: TargetStep, rows: list[int]) -> None:
        started = time.perf_counter()
        w = self.settings["context_window"]
        picked, windows, starts = [], [], []
        prompt_lens = step.runner.input_batch.num_prompt_tokens
        for i in rows:
            if len(picked) == self.settings["search_rows"]:
                break
            # Generated text only, as the paper (a prompt is not the model's own text): the window's w tokens and
            # the one before them. Positions start .. n-2 are in the cache (n-1, the newest token, is not).
            n = int(step.num_tokens_no_spec[i])
            if n - int(prompt_lens[i]) < w + 1:
                continue
            start = n - 1 - w
            picked.append(i)
            starts.append(start)
            windows.append(step.token_ids_cpu[i, start:n].astype(np.int64))
        if picked:
            candidate = self.search.propose()
            best_score = self._score(self.search.best, picked, windows, starts)
            candidate_score = self._score(candidate, picked, windows, starts)
            self.search.observe(candidate, candidate_score, best_score, frozenset(step.req_ids[i] for i in picked))
            self.stats["search_iterations"] += 1
        self.stats["search_seconds"] += time.perf_counter() - started

    # -- drafting ------------------------------------------------------------------------------------------------

    def draft(self, step: TargetStep) -> list[list[int]]:
        started = time.perf_counter()
        drafts: list[list[int]] = [[] for _ in step.req_ids]
        if self.layers is None:
            self.layers = TargetLayers(step.runner)
        rows = [i for i, new in enumerate(step.sampled_token_ids) if new and step.req_ids[i] in self.request_params]
        if self.search is not None and not self.search.done and rows:
            self._search_step(step, rows)
        committed = {i: int(step.num_tokens_no_spec[i]) for i in rows}
        budget = {}
        for i, n in committed.items():
            free = self.layers.free_slots(i, n - 1)
            budget[i] = min(self.k, free, self.max_model_len - n)
            if free < self.k:
                self.stats["block_end_cuts"] += 1
        active = [i for i in rows if budget[i] > 0]
        tokens = {i: int(step.token_ids_cpu[i, committed[i] - 1]) for i in active}
        skip = Sublayers(self.num_layers, self.skipped)
        threshold = self.settings["stop_threshold"]
        draft_started = time.perf_counter()
        position = 0
        while active:
            first = [committed[i] - 1 + position for i in active]
            logits = self.layers.forward(active, [[tokens[i]] for i in active], first, skip, write_kv=True)
            probs = torch.softmax(logits, dim=-1)
            top_p, top = probs.max(dim=-1)
            self.stats["draft_forwards"] += 1
            still = []
            for i, token, p in zip(active, top.tolist(), top_p.tolist()):
                drafts[i].append(token)
                tokens[i] = token
                if p < threshold:
                    self.stats["confidence_stops"] += 1
                elif len(drafts[i]) < budget[i]:
                    still.append(i)
            active = still
            position += 1
        self.stats["drafted_tokens"] += sum(len(d) for d in drafts)
        self.stats["draft_seconds"] += time.perf_counter() - draft_started
        self.count_propose(started)
        return drafts

    def declab_bench_reset(self) -> None:
        self.reset_phase_counters()

    def stats_snapshot(self) -> dict:
        snap = dict(self.stats)
        snap["skip_sublayers"] = sorted(self.skipped)
        skip = Sublayers(self.num_layers, self.skipped)
        snap["skipped"] = skip.describe()
        if self.layers is not None:
            # ``declab bench verify-cost`` projects the draft's cost on another device as this share of c(1).
            snap["draft_cost_of_target_forward"] = self.layers.cost_fraction(skip)
        if self.search is not None:
            st = self.search.state
            snap["search"] = {"iterations": st.iterations, "bayes_proposals": st.bayes_proposals,
                              "replacements": st.replacements, "best_matchness": st.best_score,
                              "done": self.search.done}
        return snap

    def declab_bench_memory(self) -> dict:
        return {"proposer_bytes": 0,
                "what": "none of its own: the draft is the target's weights, its keys and values go to the slots "
                        "the target's next verification overwrites"}
