"""SpecTr (Sun, Suresh, Ro, Beirami, Jain, Yu, 2023; arXiv 2310.15141, NeurIPS 2023; reading list paper 56).

"SpecTr: Fast Speculative Decoding via Optimal Transport". The draft model samples k draft sequences i.i.d.; the
target verifies them together and k-sequential draft selection (a (1 - 1/e)-optimal transport plan) accepts one
of them token by token. ``core.py`` builds the k chains as one draft tree (pure torch); ``proposer.py`` drafts it
inside vLLM through the SDK's tree drafting and verification.
"""

__all__ = ["SpecTrProposer"]


def __getattr__(name: str):
    if name == "SpecTrProposer":
        from declab.plugins.spectr.proposer import SpecTrProposer

        return SpecTrProposer
    raise AttributeError(name)
