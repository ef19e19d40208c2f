"""Draft *trees* with the proposer's own draft model: a pure grower per paper, one batched driver for all of them.

The draft-tree papers (RSD, SpecTr, DySpec) differ only in which children a node gets; everything else is shared:

* ``TreeGrower`` (pure, torch on one request's vectors): holds the tree being grown (tokens, parents, the draft
  distribution each node was drawn from) and, each round, receives the draft logits of the nodes it asked to
  expand and answers with the nodes it wants expanded next (their children need their distribution). A paper's
  grower implements ``grow``; ``tree()`` returns the ``DraftTree`` in BFS order with ``draft_probs``,
  ``children_drawn`` and ``rule`` filled exactly as the drafting did it (the interface a sampling verifier reads).
* ``TreeDraftProposer`` (a ``DraftModelProposer``): per step, syncs each tree request's ``DraftCache`` (one packed
  forward gives the root's logits), then runs *one* ``DraftModel.forward_nodes`` per round for all the batch's
  nodes to expand: each node sits at rotary position ``context - 1 + depth`` and attends to the committed context,
  its ancestors and itself (``trees.tree_attention_mask`` rows over the cache slots the tree occupies). The nodes
  are cut off the cache afterwards (``truncate``); next step ``sync`` encodes what the target accepted.

Requests the tree-verification seam cannot verify (``tree_verifiable``: today only greedy requests; a sampling
verifier subscribes to the seam) get the draft's greedy chain (``draft_chains``), verified by vLLM's rejection
sampler as PEARL's are.

Draws: a request's tree is drawn at its own temperature (the papers' draft distribution q); greedy requests are
drawn at the proposer's ``greedy_draft_temperature`` (0: deterministic top-k / beam search / argmax, and the tree
says ``children_drawn="deterministic"``). Each request has its own ``torch.Generator`` (seeded from its
``SamplingParams.seed`` when it has one), so its drafts do not depend on the batch.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from declab.integrations.sdk.drafting import DraftModelProposer, DraftRow
from declab.integrations.sdk.proposer import TargetStep
from declab.integrations.sdk.tree_verification import GREEDY_EPS, check_tree_engine
from declab.integrations.sdk.trees import DraftTree, tree_depths

__all__ = ["TreeGrower", "TreeDraftProposer", "draft_distribution", "gumbel_top_k", "bfs_order"]


def draft_distribution(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The draft's distribution at ``temperature`` (float32); temperature 0 gives the temperature-1 distribution
    (the draws are then deterministic, but values such as DySpec's still need probabilities)."""
    t = temperature if temperature > 0 else 1.0
    return torch.softmax(logits.float() / t, dim=-1)


def gumbel_top_k(probs: torch.Tensor, k: int, generator: torch.Generator | None) -> list[int]:
    """``k`` distinct tokens drawn without replacement from ``probs`` in draw order (Gumbel-top-k: the top k of
    ``log p + Gumbel noise``); with ``generator`` None, the k most likely tokens (the zero-temperature limit)."""
    k = min(k, int((probs > 0).sum()))
    scores = probs.log()
    if generator is not None:
        u = torch.rand(probs.shape, generator=generator).clamp_(1e-20, 1.0)
        scores = scores - torch.log(-torch.log(u))
    return torch.topk(scores, k).indices.tolist() if k > 0 else []


def bfs_order(parents: list[int]) -> list[int]:
    """Node indices sorted by depth, build order kept within a depth (siblings stay in draw order)."""
    depth = tree_depths(parents)
    return sorted(range(len(parents)), key=lambda i: depth[i])


class TreeGrower:
    """One request's tree, grown round by round from draft logits (pure; subclasses implement ``grow``).

    ``budget``: most draft nodes (root excluded); ``temperature``: the draw temperature (0 = deterministic);
    ``generator``: the request's random source (unused at temperature 0)."""

    children_drawn = "without_replacement"  # how a subclass draws children at temperature > 0
    rule = "recursive"  # the verification rule it asks for

    def __init__(self, root: int, budget: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        if budget < 1:
            raise ValueError(f"a draft tree needs a budget of at least one node, got {budget}")
        self.budget = budget
        self.temperature = float(temperature)
        self.generator = generator if self.temperature > 0 else None
        self.tokens: list[int] = [int(root)]
        self.parents: list[int] = [-1]
        self.depths: list[int] = [0]
        self.drawn_from: list[int] = [-1]  # per node: index into self.dists of the distribution it was drawn from
        self.dists: list[torch.Tensor] = []

    @property
    def size(self) -> int:
        """Draft nodes so far (root excluded)."""
        return len(self.tokens) - 1

    @property
    def room(self) -> int:
        return self.budget - self.size

    def distribution(self, logits: torch.Tensor) -> int:
        """Store the draft distribution of a node's children; returns its index for ``add``."""
        self.dists.append(draft_distribution(logits, self.temperature))
        return len(self.dists) - 1

    def add(self, parent: int, token: int, dist: int) -> int:
        if self.room < 1:
            raise RuntimeError("draft tree budget exceeded")
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        self.drawn_from.append(dist)
        return len(self.tokens) - 1

    def grow(self, logits: dict[int, torch.Tensor]) -> list[int]:
        """``logits``: node -> the draft's logits after it (round 0: the root). Add children; return the nodes
        whose logits the next round needs (empty: the tree is finished)."""
        raise NotImplementedError

    def tree(self) -> DraftTree:
        """The tree in BFS order, with how its children were drawn."""
        order = bfs_order(self.parents)
        new_index = {old: new for new, old in enumerate(order)}
        parents = tuple(-1 if self.parents[i] < 0 else new_index[self.parents[i]] for i in order)
        tokens = [self.tokens[i] for i in order]
        if self.generator is None:
            return DraftTree(tokens, parents)
        vocab = self.dists[0].shape[0]
        probs = torch.zeros(len(order), vocab)
        for new, old in enumerate(order):
            if self.drawn_from[old] >= 0:
                probs[new] = self.dists[self.drawn_from[old]]
        return DraftTree(tokens, parents, draft_probs=probs, children_drawn=self.children_drawn, rule=self.rule)


class TreeDraftProposer(DraftModelProposer):
    """A ``DraftModelProposer`` that drafts a ``TreeGrower``'s tree for every request the tree-verification seam
    can verify and a greedy chain for the others. Subclasses set ``spec`` / ``selected_as`` (settings include
    ``greedy_draft_temperature``), implement ``grower`` and call ``super().__init__`` first; this class opens the
    seams."""

    cut_drafts_at_max_tokens = True  # a tree per step, verified by the seam; nothing kept of it across steps

    def __init__(self, vllm_config: Any) -> None:
        super().__init__(vllm_config)
        check_tree_engine(vllm_config, what=f"{self.spec.name} (draft trees)",
                          instead="use a draft-model chain proposer (vLLM's draft_model method)")
        self.greedy_draft_temperature = float(self.settings["greedy_draft_temperature"])
        self._drafts_tree: dict[str, bool] = {}
        self._temperature: dict[str, float] = {}
        self._greedy: dict[str, bool] = {}
        self._generators: dict[str, torch.Generator] = {}
        self.stats.update({"tree_drafts": 0, "chain_drafts": 0, "tree_nodes": 0, "tree_depth_sum": 0,
                           "tree_nodes_max": 0, "tree_rounds": 0})
        self.open_seams(trees=True)

    def grower(self, root: int, budget: int, temperature: float, generator: torch.Generator,
               verified_greedily: bool) -> TreeGrower:
        """The request's grower: ``root`` its last committed token, ``budget`` its draft nodes, ``temperature`` /
        ``generator`` its draws; ``verified_greedily``: the target checks the tree greedily (the request's
        temperature is 0, whatever ``greedy_draft_temperature`` draws it at)."""
        raise NotImplementedError

    # -- per request ---------------------------------------------------------------------------------------------

    def on_request_start(self, req_id: str, params: Any) -> None:
        self._drafts_tree[req_id] = self.tree_verifiable(params)
        temperature = float(getattr(params, "temperature", 0.0) or 0.0)
        self._greedy[req_id] = temperature < GREEDY_EPS
        self._temperature[req_id] = temperature if temperature >= GREEDY_EPS else self.greedy_draft_temperature
        seed = getattr(params, "seed", None)
        gen = torch.Generator()
        gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        self._generators[req_id] = gen

    def on_request_finish(self, req_id: str) -> None:
        super().on_request_finish(req_id)
        for state in (self._drafts_tree, self._temperature, self._greedy, self._generators):
            state.pop(req_id, None)

    def declab_bench_reset(self) -> None:
        super().declab_bench_reset()
        for key in ("tree_drafts", "chain_drafts", "tree_nodes", "tree_depth_sum", "tree_nodes_max", "tree_rounds"):
            self.stats[key] = 0

    # -- drafting ------------------------------------------------------------------------------------------------

    def chain_length(self) -> int:
        """Tokens of the greedy chain drafted for requests the seam cannot verify as trees."""
        return self.k

    def draft(self, step: TargetStep) -> list[list[int] | DraftTree]:
        started = time.perf_counter()
        drafts: list[list[int] | DraftTree] = [[] for _ in step.req_ids]
        rows = self.rows_to_draft(step)
        tree_rows = [r for r in rows if self._drafts_tree.get(r.req_id)]
        chain_rows = [r for r in rows if not self._drafts_tree.get(r.req_id)]
        if chain_rows:
            chains = self.draft_chains([r.req_id for r in chain_rows], [r.context for r in chain_rows],
                                       [min(r.budget, self.chain_length()) for r in chain_rows])
            for r, chain in zip(chain_rows, chains):
                drafts[r.row] = chain
        if tree_rows:
            for r, tree in zip(tree_rows, self.draft_trees(tree_rows)):
                drafts[r.row] = tree
        self.stats["chain_drafts"] += len(chain_rows)
        self.count_propose(started)
        return drafts

    def draft_trees(self, rows: list[DraftRow]) -> list[DraftTree]:
        """One tree per row: the root's logits from the cache sync, then one ``forward_nodes`` per round."""
        caches = [self.cache(r.req_id) for r in rows]
        pending = []
        for cache, r in zip(caches, rows):
            todo = cache.sync(r.context)
            if not todo:  # everything encoded: re-encode the root to get its logits
                cache.truncate(len(r.context) - 1)
                todo = r.context[-1:]
            pending.append(todo)
        out = self.draft_model.forward(caches, pending)
        self.stats["draft_forwards"] += 1
        growers = [self.grower(r.context[-1], r.budget, self._temperature[r.req_id], self._generators[r.req_id],
                               self._greedy[r.req_id]) for r in rows]
        contexts = [len(r.context) for r in rows]
        slots: list[dict[int, int]] = [{} for _ in rows]  # per row: tree node -> cache slot (the root: context - 1)
        wanted = [g.grow({0: out.logits[j]}) for j, g in enumerate(growers)]
        rounds = 0
        while any(wanted):
            live = [j for j, w in enumerate(wanted) if w]
            tokens, positions, masks = [], [], []
            for j in live:
                g, cache, ctx = growers[j], caches[j], contexts[j]
                start = len(cache)
                for n, node in enumerate(wanted[j]):
                    slots[j][node] = start + n
                mask = torch.zeros(len(wanted[j]), start + len(wanted[j]), dtype=torch.bool)
                mask[:, :ctx] = True
                for n, node in enumerate(wanted[j]):
                    a = node
                    while a > 0:  # the node and its ancestors below the root (the root is context slot ctx - 1)
                        mask[n, slots[j][a]] = True
                        a = g.parents[a]
                tokens.append([g.tokens[node] for node in wanted[j]])
                root = cache.position(ctx - 1)  # a node's rotary position: its depth after the root's
                positions.append([root + g.depths[node] for node in wanted[j]])
                masks.append(mask)
            out = self.draft_model.forward_nodes([caches[j] for j in live], tokens, positions, masks)
            self.stats["draft_forwards"] += 1
            rounds += 1
            row = 0
            for j in live:
                logits = {}
                for node in wanted[j]:
                    logits[node] = out.logits[row]
                    row += 1
                wanted[j] = growers[j].grow(logits)
        for cache, ctx in zip(caches, contexts):
            cache.truncate(ctx)  # the nodes are not committed: next step's sync encodes what the target accepted
        trees = [g.tree() for g in growers]
        self._count(trees, rounds)
        return trees

    def _count(self, trees: list[DraftTree], rounds: int) -> None:
        s = self.stats
        for t in trees:
            s["tree_nodes"] += len(t.tokens) - 1
            s["tree_nodes_max"] = max(s["tree_nodes_max"], len(t.tokens) - 1)
            s["tree_depth_sum"] += max(tree_depths(t.parents))
        s["tree_drafts"] += len(trees)
        s["tree_rounds"] += rounds
        s["drafted_tokens"] += sum(len(t.tokens) - 1 for t in trees)
        s["draft_rows"] += len(trees)
        s["draft_cache_bytes"] = max(s["draft_cache_bytes"], sum(c.nbytes for c in self.caches.values()))

