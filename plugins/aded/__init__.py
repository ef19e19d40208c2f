"""ADED (Liu, Lei, Zhang, Xu, 2024; arXiv 2407.12021; reading list paper 8): "Adaptive Draft-Verification for
Efficient Large Language Model Decoding". Training-free speculation from an adaptive tri-gram representation of the
model, updated from the model's own outputs as it decodes, and a Monte-Carlo tree search over it that balances
exploration and exploitation to build drafts. ``core.py``: the table and the search (pure Python, with naive
references); ``proposer.py``: the vLLM ``custom_class`` proposer (chains for vLLM's verifier, or the search's tree
for the tree-verification seam).
"""

__all__ = ["AdedProposer"]


def __getattr__(name: str):
    if name == "AdedProposer":
        from declab.plugins.aded.proposer import AdedProposer

        return AdedProposer
    raise AttributeError(name)
