"""DySpec (Xiong et al., 2024; arXiv 2410.11744; reading list paper 31).

"DySpec: Faster Speculative Decoding with Dynamic Token Tree Structure". The draft tree is not fixed: it grows
greedily, always adding the candidate token whose path has the largest draft probability, until a node budget is
spent. ``core.py`` holds the growth (pure torch); ``proposer.py`` drafts it inside vLLM through the SDK's tree
drafting and verification.
"""

__all__ = ["DySpecProposer"]


def __getattr__(name: str):
    if name == "DySpecProposer":
        from declab.plugins.dyspec.proposer import DySpecProposer

        return DySpecProposer
    raise AttributeError(name)
