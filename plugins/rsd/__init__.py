"""RSD (Jeon, Gagrani, Goel, Park, Lee, Lott, 2024; arXiv 2402.14160; reading list paper 38).

"Recursive Speculative Decoding: Accelerating LLM Inference via Sampling Without Replacement". The draft model
builds a tree whose siblings are drawn without replacement (Gumbel-top-k per node, or stochastic beam search over
sequences), and recursive rejection sampling verifies a node's children one after another. ``core.py`` holds the
tree growers (pure torch); ``proposer.py`` runs them inside vLLM through the SDK's tree drafting and verification.
"""

__all__ = ["RSDProposer"]


def __getattr__(name: str):
    if name == "RSDProposer":
        from declab.plugins.rsd.proposer import RSDProposer

        return RSDProposer
    raise AttributeError(name)
