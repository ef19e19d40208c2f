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


def shorten_context(prompt: Sequence[int], *, budget: int, query_tokens: int, chunk_tokens: int) -> list[int]:
    """The draft's view of ``prompt``: the retrieved chunks in prompt order, then the query; at most ``budget``
    tokens (the query alone may be longer: it is cut to ``budget``)."""
    if len(prompt) <= budget:
        return list(prompt)
    query = list(prompt[max(0, len(prompt) - query_tokens):])[-budget:]
    context = prompt[: len(prompt) - len(query)]
    chunks = _chunks(context, chunk_tokens)
    scores = chunk_scores(chunks, query)
    room = budget - len(query)
    keep: set[int] = set()
    # Best first; ties go to the later chunk (nearer the query).
    for i in sorted(range(len(chunks)), key=lambda i: (-scores[i], -i)):
        if len(chunks[i]) <= room:
            keep.add(i)
            room -= len(chunks[i])
    return [t for i in sorted(keep) for t in chunks[i]] + query


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
