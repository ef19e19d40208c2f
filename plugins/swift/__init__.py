"""SWIFT (Xia et al., 2024; arXiv 2410.06916; reading list paper 49): "SWIFT: On-the-Fly Self-Speculative Decoding for
LLM Inference Acceleration". The target drafts for itself with a set of its intermediate sublayers skipped, chosen
while serving; drafting stops early when the draft is unsure. ``core.py``: the layer-set search (pure numpy);
``proposer.py``: the vLLM ``custom_class`` proposer, which runs the kept layers on the target's paged KV cache
(``declab.integrations.sdk.layer_skip``).
"""

__all__ = ["SWIFTProposer"]


def __getattr__(name: str):
    if name == "SWIFTProposer":
        from declab.plugins.swift.proposer import SWIFTProposer

        return SWIFTProposer
    raise AttributeError(name)
