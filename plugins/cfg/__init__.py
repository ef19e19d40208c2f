"""Classifier-free guidance, CFG, for language models (Sanchez et al. 2023, "Stay on topic with Classifier-Free
Guidance", arXiv 2306.17806; not in the reading list: a plugin beyond it, paper 0).

Each token is drawn from ``log p(y | negative) + g * (log p(y | prompt) - log p(y | negative))`` with HF
transformers' names and semantics (``guidance_scale``, ``negative_prompt``; ``UnbatchedClassifierFreeGuidance
LogitsProcessor``): the unconditional (negative) stream is a companion row decoded in lockstep with the request in
vLLM's batch, the same seam as CAD (``declab.patches.request_groups``). An empty ``negative_prompt`` starts that
stream from the prompt's last token alone, as HF does without ``negative_prompt_ids``. The formula is in
``core.py`` (CAD's ``mix_logprobs`` with weights ``(g, 1 - g)``), the parameters in ``spec.py``.
"""
