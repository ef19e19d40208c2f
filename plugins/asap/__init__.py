"""ASAp (Grammar-Aligned Decoding, Park et al. 2024, reading-list paper 65) and plain grammar-constrained decoding.

Two logits-level plugins share this folder: ``asap`` (``spec.py``) and its baseline ``gcd`` (``gcd_spec.py``). The
pure core (torch + xgrammar, no vLLM) is ``core.py``.
"""
