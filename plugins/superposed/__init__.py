"""Superposed Decoding (paper 30; Shen et al., "Superposed Decoding: Multiple Generations from a Single
Autoregressive Inference Pass", arXiv 2405.18400): k completions of a request from one forward pass per step.

The request's one engine row is fed, at each generated position, the weighted superposition of the k drafts' newest
token embeddings (row-input-embeddings seam); its next-token distribution extends all drafts, filtered by an
interpolated n-gram model; the k drafts come back as the request's ``n = k`` completions (bundled-completions seam).
Algorithm in ``core.py``, n-gram tables in ``ngram.py``, the engine side in ``processor.py``.
"""
