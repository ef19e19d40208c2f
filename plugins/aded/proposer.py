"""vLLM 0.32 adapter: ADED as a ``custom_class`` speculative proposer (V1 model runner).

Usage, with ``DECLAB_PLUGINS`` including ``aded``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.aded.AdedProposer",
                        "num_speculative_tokens": 6}          # tree mode: 24 (spec.TREE_NODES) or any K
    additional_config={"declab": {"aded": {"iterations": 48}}}   # optional (spec.py)

One engine-wide ``TrigramTable`` (the paper's representation carries over from query to query). Per step:

1. every request's newly committed tokens are observed (its prompt too when it starts, ``observe_prompt``): the
   model's outputs adapt the table;
2. per request, ``search`` from its last two tokens; ``mode="chain"`` drafts the most-visited path (up to K,
   verified by vLLM's rejection sampler); ``mode="tree"`` drafts the K most visited nodes as a ``DraftTree`` for
   requests the tree seam can verify (greedy), the chain for the others.

Both verifications are exact, so greedy output is token-identical to plain decoding.
"""

from __future__ import annotations

import time

from declab.integrations.sdk.proposer import DeclabProposer, DraftTree, TargetStep
from declab.integrations.sdk.tree_verification import check_tree_engine
from declab.plugins.aded.core import TrigramTable, best_chain, best_tree, search
from declab.plugins.aded.spec import SPEC

PHASE_COUNTERS = ("observed_tokens", "tree_drafts", "chain_drafts", "draft_tokens")


class AdedProposer(DeclabProposer):
    spec = SPEC
    selected_as = "ADED as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        config = self.settings
        self.k = self.chain_length()
        if config["decay"] <= 0.0:
            raise ValueError("aded: decay must be > 0")
        self.tree = config["mode"] == "tree"
        if self.tree:
            check_tree_engine(vllm_config, what="aded tree mode", instead="use mode 'chain'")
        self.iterations, self.branch, self.c_puct = config["iterations"], config["branch"], config["c_puct"]
        self.observe_prompt = config["observe_prompt"]
        self.table_settings = (config["decay"], config["row_size"], config["max_rows"])
        self.table = TrigramTable(*self.table_settings)
        self._seen: dict[str, int] = {}  # request -> committed tokens already observed
        self._drafts_tree: dict[str, bool] = {}
        self.init_stats(PHASE_COUNTERS)
        self.open_seams(trees=self.tree)

    def on_request_start(self, req_id: str, params) -> None:
        self._seen[req_id] = -1  # the prompt's length is known at the first step
        if self.tree:
            self._drafts_tree[req_id] = self.tree_verifiable(params)

    def on_request_finish(self, req_id: str) -> None:
        self._seen.pop(req_id, None)
        self._drafts_tree.pop(req_id, None)

    def _observe(self, step: TargetStep, row: int) -> list[int]:
        """Observe the row's committed tokens not observed yet; returns its last two tokens."""
        req_id, size = step.req_ids[row], int(step.num_tokens_no_spec[row])
        seen = self._seen.get(req_id, -1)
        if seen < 0:  # first step: the prompt (or only its end) is context, the rest is output
            prompt = size - len(step.sampled_token_ids[row])
            seen = 2 if self.observe_prompt else max(2, prompt)
        if size > seen:
            lo = max(0, seen - 2)
            self.table.observe_stream(step.token_ids_cpu[row, lo:size].tolist(), start=seen - lo)
            self.stats["observed_tokens"] += size - seen
        self._seen[req_id] = max(seen, size)
        return step.token_ids_cpu[row, max(0, size - 2) : size].tolist()

    def draft(self, step: TargetStep) -> list[list[int] | DraftTree]:
        started = time.perf_counter()
        drafts: list[list[int] | DraftTree] = [[] for _ in step.sampled_token_ids]
        for i, new in enumerate(step.sampled_token_ids):
            if not new:
                continue
            last = self._observe(step, i)
            a, b = (last[0], last[1]) if len(last) == 2 else (-1, last[-1])
            as_tree = self.tree and self._drafts_tree.get(step.req_ids[i], False)
            depth = self.k if not as_tree else max(1, min(self.k, 8))
            nodes = search(self.table, a, b, self.iterations, self.branch, depth, self.c_puct)
            if as_tree:
                tokens, parents = best_tree(nodes, self.k)
                drafts[i] = DraftTree(tokens, parents) if len(tokens) > 1 else []
                self.stats["tree_drafts"] += 1
                self.stats["draft_tokens"] += len(tokens) - 1
            else:
                drafts[i] = best_chain(nodes, self.k)
                self.stats["chain_drafts"] += 1
                self.stats["draft_tokens"] += len(drafts[i])
        self.count_propose(started)
        return drafts

    # -- benchmark hooks -----------------------------------------------------------------------------------------

    def declab_bench_reset(self) -> None:
        """Cold start: an empty table, counters to 0."""
        self.table = TrigramTable(*self.table_settings)
        self.reset_phase_counters()

    def declab_bench_memory(self) -> dict:
        return {"proposer_bytes": self.table.nbytes, "contexts": len(self.table),
                "what": "adaptive tri-gram table (contexts -> successor weights, + bigram back-off rows)"}

    def stats_snapshot(self) -> dict:
        return dict(self.stats, contexts=len(self.table))
