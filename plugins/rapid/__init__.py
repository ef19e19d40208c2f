"""RAPID (Chen, Li, Liu, Zhang, Wang, Liu, 2025; arXiv 2502.20330, ICML 2025; reading list paper 58).

"Long-Context Inference with Retrieval-Augmented Speculative Decoding". On long contexts the draft model's cost
grows with the context it reads; RAPID lets the draft read a retrieved, shortened context (the chunks most similar
to the query) while the target reads the whole prompt and verifies, so the output stays the target's. ``core.py``
shortens the prompt (pure Python); ``proposer.py`` runs the draft on it inside vLLM. The paper's knowledge-transfer
variant (a retrieval-augmented target distribution, lossy) is not built.
"""

__all__ = ["RapidProposer"]


def __getattr__(name: str):
    if name == "RapidProposer":
        from declab.plugins.rapid.proposer import RapidProposer

        return RapidProposer
    raise AttributeError(name)
