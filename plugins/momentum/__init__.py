"""Momentum Decoding (Lan, Su, Liu, Huang, Mao, 2022; arXiv 2212.02175; reading list paper 15).

Open-ended generation is seen as a walk on a directed graph whose nodes are the tokens already written (prompt
included) and whose edges are their bigrams; degeneration is the walk getting stuck in circular loops. At each step
the k most likely tokens are scored ``p(v | x_<t) - alpha * R(d(v))``, where ``d(v)`` is the depth of the loop that
``v`` would close (0 for a new node, else the longest n-gram, up to ``max_ngram``, that ``v`` would repeat) and ``R``
is a pre-defined increasing resistance function; the best-scoring token is taken greedily. The pure algorithm is in
``core.py`` (a per-request logits transform), its parameters in ``spec.py``.
"""
