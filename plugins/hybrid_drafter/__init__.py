"""Hybrid self-speculative drafter (not a reading-list paper; issue 16): the request's own context first, recycled
successors otherwise.

Each step, per request: the longest suffix of its committed tokens (prompt + output, ``min_ngram..max_ngram``
tokens) that occurred earlier in the same request proposes the tokens that followed it (prompt lookup / suffix
matching, ``core.ContextIndex``); when no such suffix exists, or the match runs out before K tokens, the rank-0
chain of recycled successors continues it (the target's own top-k of every position it computed, the shared matrix
plus the request's own overlay: ``declab.plugins.shared.recycled_successors``, the store Token Recycling drafts
from). One chain per request, verified by vLLM's rejection sampler, so greedy output is token-identical to plain
decoding and sampling keeps the target distribution.
"""

__all__ = ["HybridProposer"]


def __getattr__(name: str):
    if name == "HybridProposer":
        from declab.plugins.hybrid_drafter.proposer import HybridProposer

        return HybridProposer
    raise AttributeError(name)
