"""Token Recycling (Luo, Wang, Zhu, Zhang, Zhang, Yang, Xu, 2024; arXiv 2408.08696, ACL 2025; reading list paper 21).

"Turning Trash into Treasure: Accelerating Inference of Large Language Models with Token Recycling". A training-free,
self-speculative decoding method: the top-k candidate tokens the target model produces at every position it
computes (the "trash" that greedy decoding throws away, rejected draft positions included) are stored in a small
adjacency matrix ``M[V, k]`` (row ``t`` = the k most likely successors of token ``t``, overwritten whenever ``t`` is
seen again; the matrix carries over from one query to the next). Each step a draft tree is read out of the matrix
breadth-first from the last committed token along a static tree template (the paper's 80-node, depth-6 tree), the
target verifies it in one forward pass with tree attention, the longest draft path that equals the target's greedy
choices is accepted, and the new top-k candidates update the matrix. The pure algorithm (matrix, template, BFS
drafting, best chain, tree mask, greedy verification) is in ``core.py``; vLLM 0.32 verifies one chain per request,
so the engine stage drafts the tree's rank-0 main branch.
"""

# `speculative_config={"method": "custom_class", "model": "declab.plugins.token_recycling.TokenRecyclingProposer"}`
# imports this package in the worker; the proposer (torch, vLLM) is loaded only then.
__all__ = ["TokenRecyclingProposer"]


def __getattr__(name: str):
    if name == "TokenRecyclingProposer":
        from declab.plugins.token_recycling.proposer import TokenRecyclingProposer

        return TokenRecyclingProposer
    raise AttributeError(name)
