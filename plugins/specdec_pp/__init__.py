"""SpecDec++ (Huang, Guo, Wang, 2024; arXiv 2405.19715; reading list paper 47).

"SpecDec++: Boosting Speculative Decoding via Adaptive Candidate Lengths". Speculative decoding as a Markov decision
process: after each draft token, an acceptance-prediction head on the draft's hidden state predicts whether the
target will accept it, and drafting stops as soon as the predicted probability that at least one drafted token is
rejected, ``1 - prod_i p_accept(i)``, exceeds a threshold ``h``. ``head.py`` is the head (pure torch),
``train_head.py`` trains it on the draft's hidden states along decoder-29m's greedy continuations,
``proposer.py`` runs the stop rule inside vLLM with a draft model of the proposer's own.
"""

__all__ = ["SpecDecPPProposer"]


def __getattr__(name: str):
    if name == "SpecDecPPProposer":
        from declab.plugins.specdec_pp.proposer import SpecDecPPProposer

        return SpecDecPPProposer
    raise AttributeError(name)
