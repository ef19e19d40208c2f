"""vLLM 0.32 adapter: Token Recycling as a ``custom_class`` speculative proposer (V1 model runner).

Usage (offline or ``vllm serve --speculative-config``), with ``DECLAB_PLUGINS`` including ``token_recycling``::

    speculative_config={"method": "custom_class",
                        "model": "declab.plugins.token_recycling.TokenRecyclingProposer",
                        "num_speculative_tokens": 6}

Engine-wide parameters (``successors``, ``mode``, ``template``, ``stop_at_unseen``) come from
``additional_config={"declab": {"token_recycling": {...}}}`` (or the deprecated ``DECLAB_TOKEN_RECYCLING`` JSON;
defaults in ``spec.py``). The proposer is a ``DeclabProposer`` (the SDK's base class); per step it

1. takes the target logits of the step and the verified draft tokens, which the SDK's runner-to-proposer feed
   hands over (``on_step``), and writes ``M[input token of row j] <- top-k(logits_j)`` for every verified
   position, draft positions included (paper Sec. 3 update);
2. drafts, per request, from the last committed token (``draft``):

   * ``mode="chain"`` (default): the rank-0 chain of ``M`` (the paper tree's main branch), up to
     ``num_speculative_tokens`` tokens, verified by vLLM's own rejection sampler;
   * ``mode="tree"`` (stage 2, CPU): the whole static tree (a ``DraftTree``, BFS order, deterministic children;
     ``num_speculative_tokens`` = the template's 80 draft nodes) for every request the SDK's tree-verification
     seam can verify (greedy or sampled with temperature / top-k / top-p / seed, nothing else that changes or
     reports logits; decided once per request in ``on_request_start``); other requests get the tree's main branch
     as a chain, verified by vLLM's rejection sampler.

The matrix lives as long as the engine (shared by all requests, "hot start" across queries, as in the paper).
With ``overlay`` (default, not in the paper) each live request also keeps the rows its own stream wrote
(``RequestSuccessors``) and drafts from them first, so concurrent streams stop erasing each other's successors.
Chains are verified by vLLM's own rejection sampler, so greedy output is token-identical to plain decoding and
sampling is distribution-preserving (on CPU only with the ``cpu_expand_kernel`` patch, applied when the plugin is
selected). Trees are verified by the seam: greedily (``longest_accepted_path``), token-identical to plain greedy
decoding, and at temperature > 0 by the seam's sampling verifier (``tree_sampling``: the drafts are point masses,
so a draw from the target is accepted when it is a child), which keeps the target distribution and commits what
plain seeded sampling draws for a seeded request (all tested through the engine).
"""

from __future__ import annotations

import logging
import time


from declab.integrations.sdk.proposer import DeclabProposer, DraftTree, TargetStep
from declab.integrations.sdk.tree_verification import check_tree_engine
from declab.plugins.shared.recycled_successors import RecycledSuccessors
from declab.plugins.token_recycling.core import PAPER_TREE, build_draft_tree
from declab.plugins.token_recycling.spec import SPEC

TREE_TEMPLATES = {"paper": PAPER_TREE}  # names as in spec.TREE_TEMPLATES

logger = logging.getLogger(__name__)

# Optional path: proposer statistics are written there as JSON. The generic ``runtime.PROPOSER_STATS_ENV``
# (``DECLAB_PROPOSER_STATS``, set by ``declab bench spec``) takes precedence.
STATS_ENV = "DECLAB_TOKEN_RECYCLING_STATS"
# Counters ``declab_bench_reset`` zeroes (the others describe the configuration or count since start-up).
PHASE_COUNTERS = ("rows_updated",)


class TokenRecyclingProposer(DeclabProposer):
    spec = SPEC
    selected_as = "Token Recycling as the speculative proposer"
    cut_drafts_at_max_tokens = True  # it learns from what the target verified (``verified_drafts``), not from its drafts

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        config = self.settings
        self.k = self.num_speculative_tokens
        self.tree = config["mode"] == "tree"
        self.template = TREE_TEMPLATES[config["template"]] if self.tree else None
        if self.tree:
            if self.k != self.template.num_draft_nodes:
                raise ValueError(
                    f"num_speculative_tokens must be {self.template.num_draft_nodes} for token_recycling in tree mode "
                    f"(the draft nodes of template {config['template']!r}), got {self.k}"
                )
            check_tree_engine(vllm_config, what="token_recycling tree mode", instead="use mode 'chain'")
        else:
            self.chain_length()
        self.stop_at_unseen = config["stop_at_unseen"]
        # The shared matrix and, with "overlay", the rows each live request's own stream wrote (the family module
        # shared with other recycling proposers).
        self.recycled = RecycledSuccessors(vllm_config.model_config.get_vocab_size(), config["successors"],
                                           config["overlay_rows"] if config["overlay"] else None)
        self.matrix = self.recycled.matrix
        if self.tree and self.template.max_rank >= self.matrix.k:
            raise ValueError(f"template {config['template']!r} needs successors >= {self.template.max_rank + 1}, "
                             f"got {self.matrix.k}")
        # Tree mode: per live request, whether it is drafted as a tree (the seam can verify it) or as a chain.
        self._drafts_tree: dict[str, bool] = {}
        self._step_started = 0.0
        self.init_stats(PHASE_COUNTERS, stats_env=STATS_ENV, matrix_bytes=self.matrix.nbytes,
                        successors=self.matrix.k, chain_len=self.k, mode=config["mode"], tree_drafts=0,
                        chain_drafts=0, overlay=config["overlay"])
        logger.info("Token Recycling: matrix %s x %d (%.2f MB), %s", self.matrix.vocab_size, self.matrix.k,
                    self.matrix.nbytes / 1e6,
                    f"tree {self.template!r}" if self.tree else f"chain length {self.k}")
        self.open_seams(trees=self.tree)

    # -- per request ---------------------------------------------------------------------------------------------

    def on_request_start(self, req_id: str, params) -> None:
        if self.tree:
            self._drafts_tree[req_id] = self.tree_verifiable(params)
        self.recycled.start(req_id)

    def on_request_finish(self, req_id: str) -> None:
        self._drafts_tree.pop(req_id, None)
        self.recycled.finish(req_id)  # memory per request, measured when it is largest (at the end)

    @property
    def overlay_rows(self) -> int | None:
        """Most rows one request's overlay keeps; None = the paper's single matrix (settable between runs)."""
        return self.recycled.overlay_rows

    @overlay_rows.setter
    def overlay_rows(self, value: int | None) -> None:
        self.recycled.overlay_rows = value

    # -- per step ------------------------------------------------------------------------------------------------

    def on_step(self, step: TargetStep) -> None:
        """M[token fed at row j] <- top-k(logits_j) for every position the target just computed."""
        self._step_started = time.perf_counter()
        self.stats["rows_updated"] += self.recycled.learn(step)

    def draft(self, step: TargetStep) -> list[list[int] | DraftTree]:
        active = [i for i, new in enumerate(step.sampled_token_ids) if new]
        drafts: list[list[int] | DraftTree] = [[] for _ in step.sampled_token_ids]
        roots = {i: int(step.token_ids_cpu[i, int(step.num_tokens_no_spec[i]) - 1]) for i in active}
        tree_rows = [i for i in active if self._drafts_tree[step.req_ids[i]]] if self.tree else []
        for i in tree_rows:
            tokens, _ = build_draft_tree(self.matrix, roots[i], self.template,
                                         self.recycled.overlays.get(step.req_ids[i]))
            drafts[i] = DraftTree(tokens, self.template.parents)
        tree_row_set = set(tree_rows)
        chain_rows = [i for i in active if i not in tree_row_set]
        if chain_rows:
            # Tree mode drafts a chain for requests a tree cannot serve: the tree's main branch.
            length = self.template.main_branch_length if self.tree else self.k
            chains = self.recycled.chains([step.req_ids[i] for i in chain_rows], [roots[i] for i in chain_rows],
                                          length, self.stop_at_unseen)
            for row, i in enumerate(chain_rows):
                drafts[i] = chains[row]
        self.stats["tree_drafts"] += len(tree_rows)
        self.stats["chain_drafts"] += len(chain_rows)
        self.count_propose(self._step_started)
        return drafts

    # -- benchmark hooks (``declab bench spec``'s worker calls them between phases) ----------------------------

    def declab_bench_reset(self) -> None:
        """Cold start: the adjacency matrix back to zeros, the per-phase counters to 0."""
        self.recycled.reset()
        self.reset_phase_counters()

    def declab_bench_memory(self) -> dict:
        """Bytes of the proposer's own state (the matrix and its seen flags; per-request overlays, which live only
        while their request does, reported per request: mean and max over the requests finished this phase)."""
        return {**self.recycled.memory(),
                "what": "adjacency matrix |V| x k (+ seen flags)"
                        + (" + per-request overlays (rows its own stream wrote)" if self.overlay_rows else "")}

    def stats_snapshot(self) -> dict:
        stats = dict(self.stats, seen_rows=self.matrix.num_seen, **{
            f"overlay_{k}": v for k, v in self.recycled.finished.items()})
        if self.tree:
            stats.update(self.tree_verification_stats())
        return stats
