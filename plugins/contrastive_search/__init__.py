"""Contrastive search (Su, Lan, Wang, Yogatama, Kong, Collier, 2022; "A Contrastive Framework for Neural Text
Generation", NeurIPS 2022; reading list paper 27).

Deterministic decoding that keeps greedy's coherence without its repetition: among the model's top-k next tokens it
picks the one that trades probability against similarity to the context (the degeneration penalty, the maximum
cosine similarity between the candidate's last-layer hidden state and those of every earlier token). The pure step
is ``core.py``; ``proposer.py`` runs it inside vLLM's batch as a depth-1 draft tree per step (the tree-verification
seam): the root is the last committed token, the children are the k candidates, one forward gives every candidate's
hidden state, and a tree verifier commits the winner.
"""

__all__ = ["ContrastiveSearchProposer"]


def __getattr__(name: str):
    if name == "ContrastiveSearchProposer":
        from declab.plugins.contrastive_search.proposer import ContrastiveSearchProposer

        return ContrastiveSearchProposer
    raise AttributeError(name)
