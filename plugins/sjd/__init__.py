"""SJD (Teng et al., 2024; arXiv 2410.01699; reading list paper 34): "Accelerating Auto-regressive Text-to-Image
Generation with Training-free Speculative Jacobi Decoding". The target drafts for itself: the draft of each step is
sampled from the distributions the target computed, one step earlier, at the positions past the accepted prefix
(the previous Jacobi iteration; new positions start from random tokens), and the target accepts them with the
probabilistic criterion ``min(1, p/q)`` plus residual resampling, so sampling keeps the target distribution
(greedy: the special case of point-mass drafts). ``core.py``: the Jacobi window (pure torch); ``proposer.py``: the
vLLM ``custom_class`` proposer, which hands its draft distributions to vLLM's rejection sampler.
"""

__all__ = ["SJDProposer"]


def __getattr__(name: str):
    if name == "SJDProposer":
        from declab.plugins.sjd.proposer import SJDProposer

        return SJDProposer
    raise AttributeError(name)
