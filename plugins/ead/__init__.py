"""EAD (Entropy Adaptive Decoding: Dynamic Model Switching for Efficient Inference; reading list paper 10).

A small model generates; while the rolling entropy of the active model's next-token distributions is at or above a
threshold the large model generates instead, until the entropy drops. Lossy by design: tokens the small model writes
are kept without verification. ``core.py`` holds the per-request switch (pure Python); ``proposer.py`` runs it as a
vLLM ``custom_class`` proposer whose drafts the patch ``ead_accepts_drafts`` accepts as they are; ``bench.py`` is
``declab bench ead`` (quality vs target share per threshold).
"""

__all__ = ["EADProposer"]


def __getattr__(name: str):
    if name == "EADProposer":
        from declab.plugins.ead.proposer import EADProposer

        return EADProposer
    raise AttributeError(name)
