"""Multi-Modal Mutual-Information Decoding, M3ID (Favero et al., CVPR 2024, arXiv 2403.14003; reading list paper 1).

The conditioned logits (main prompt: with the image, or any conditioning prefix) are amplified against the
unconditioned ones (``contrast_prompt``) with a weight ``exp(lam * t) - 1`` that grows with the position ``t``, where
the conditioned model is unsure (top probability below ``threshold``). The formula is in ``core.py``, the parameters
in ``spec.py``. Only the text-conditioning path is implemented and tested here.
"""
