"""LOL, "Lower Layer Matters" (reading-list paper 29): multi-layer fusion contrastive decoding against an amateur
model with induced hallucination, plus its training-free half (final vs lower layer of the served model,
DoLa-style). The formulas are in ``core.py``, the parameters in ``spec.py``, the amateur in ``amateur.py``."""
