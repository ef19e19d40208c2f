"""Context-aware decoding, CAD (Shi et al. 2023, arXiv 2305.14739; reading list paper 53 is its reproduction study,
Xu 2023, arXiv 2312.14335).

Each token is drawn from ``softmax[(1 + alpha) * logit(y | c, x) - alpha * logit(y | x)]``: the model with the context
``c`` (the main prompt) against the same model without it (``contrast_prompt``), which amplifies what the context
says over what the model memorised. The formula is in ``core.py`` (a ``ContrastiveProcessor``), the parameters in
``spec.py``; the two rows are kept in lockstep inside vLLM's batch by ``declab.patches.request_groups``.
"""
