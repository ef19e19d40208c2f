"""RAPID's retrieval step: the draft's shortened context (pure Python, token ids in, token ids out).

Chen et al., "Long-Context Inference with Retrieval-Augmented Speculative Decoding" (arXiv 2502.20330), Sec. 3.1:
the long context is split into chunks, the chunks most relevant to the query are retrieved, and the draft reads
those (in their original order) followed by the query. The paper retrieves with a dense embedding model; a serving
proposer has only token ids at hand, so relevance here is lexical, the BM25-style sum of the inverse chunk
frequencies of the query tokens a chunk contains::

    score(chunk) = sum over distinct tokens t in query and chunk of log(1 + n_chunks / df(t))

The query is the prompt's last ``query_tokens`` tokens (chat and Spec-Bench prompts end with the question or the
instruction). ``shorten_context`` keeps the query, then the best chunks while they fit in ``budget`` tokens; a
prompt that already fits is returned unchanged. ``naive_shorten_context`` is the same rule written as a plain sort,
the reference the property tests compare against.

Positions (``keep_positions``, our addition; the paper concatenates the retrieved text): the draft can read each
kept token at the rotary position it had in the prompt (``kept_indices``) rather than packed from 0, so the distances
between a retrieved chunk, the query and the generated tokens are the ones the target sees. Measured offline
(``plugins/rapid/context_study.py``), this raises the draft's agreement with decoder-29m's continuations on every
long prompt set studied.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def _chunks(context: Sequence[int], size: int) -> list[list[int]]:
    return [list(context[i:i + size]) for i in range(0, len(context), size)]


def chunk_scores(chunks: Sequence[Sequence[int]], query: Sequence[int]) -> list[float]:
    """Lexical relevance of each chunk to the query (inverse chunk frequency of the shared tokens)."""
    df = Counter(t for c in chunks for t in set(c))
    q = set(query)
    n = len(chunks)
    return [sum(math.log1p(n / df[t]) for t in q.intersection(c)) for c in chunks]


def kept_indices(prompt: Sequence[int], *, budget: int, query_tokens: int, chunk_tokens: int) -> list[int]:
    """The indices in ``prompt`` of the draft's view of it, increasing: the retrieved chunks in prompt order, then
    the query; at most ``budget`` of them (the query alone may be longer: it is cut to ``budget``). A prompt that
    fits is kept whole. They are also the rotary positions the tokens had in the prompt (``keep_positions``)."""
    n = len(prompt)
    if n <= budget:
        return list(range(n))
    q_len = min(query_tokens, budget)
    query = prompt[n - q_len:]
    context = prompt[: n - q_len]
    chunks = _chunks(context, chunk_tokens)
    scores = chunk_scores(chunks, query)
    room = budget - q_len
    keep: set[int] = set()
    # Best first; ties go to the later chunk (nearer the query).
    for i in sorted(range(len(chunks)), key=lambda i: (-scores[i], -i)):
        if len(chunks[i]) <= room:
            keep.add(i)
            room -= len(chunks[i])
    return [i * chunk_tokens + j for i in sorted(keep) for j in range(len(chunks[i]))] + list(range(n - q_len, n))


def shorten_context(prompt: Sequence[int], *, budget: int, query_tokens: int, chunk_tokens: int) -> list[int]:
    """The draft's view of ``prompt``: the tokens at ``kept_indices``."""
    return [prompt[i] for i in kept_indices(prompt, budget=budget, query_tokens=query_tokens,
                                            chunk_tokens=chunk_tokens)]


def naive_shorten_context(prompt: Sequence[int], *, budget: int, query_tokens: int, chunk_tokens: int) -> list[int]:
    """Reference: score every chunk, rank by (score, position), fill the budget greedily, restore prompt order."""
    prompt = list(prompt)
    if len(prompt) <= budget:
        return prompt
    q_len = min(query_tokens, len(prompt), budget)
    query = prompt[len(prompt) - q_len:] if q_len else []
    context = prompt[: len(prompt) - len(query)]
    chunks = [context[i:i + chunk_tokens] for i in range(0, len(context), chunk_tokens)]
    ranked = []
    for i, c in enumerate(chunks):
        score = 0.0
        for t in set(query):
            if t in c:
                df = sum(1 for other in chunks if t in other)
                score += math.log(1 + len(chunks) / df)
        ranked.append((score, i))
    ranked.sort(reverse=True)
    room, kept = budget - len(query), []
    for _, i in ranked:
        if len(chunks[i]) <= room:
            kept.append(i)
            room -= len(chunks[i])
    return [t for i in sorted(kept) for t in chunks[i]] + query
