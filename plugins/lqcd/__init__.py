"""Leading Query Contrastive Decoding, LQCD (Zhao et al. 2024, arXiv 2408.11261; reading list paper 25).

Sycophancy mitigation: the main prompt is the user's leading query (it carries a cue such as "I think the answer
is X"), ``contrast_prompt`` a neutral version of it; each token is drawn from
``softmax[(1 + alpha) * logit(y | x_n) - alpha * logit(y | x_l)]``, which suppresses what the leading cue adds. The
formula is in ``core.py``, the parameters in ``spec.py``.
"""
