"""RAPID's context shortening (``declab.plugins.rapid.core``) against its naive reference, and its invariants."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from declab.plugins.rapid.core import kept_indices, naive_shorten_context, shorten_context

prompts = st.lists(st.integers(0, 40), min_size=1, max_size=400)
sizes = st.tuples(st.integers(8, 300), st.integers(1, 80), st.integers(4, 64))


@settings(max_examples=300, deadline=None)
@given(prompts, sizes)
@example([0] * 10, (8, 1, 4))  # equal chunks, a short last chunk (found by hypothesis in a clean-clone run)
def test_equals_the_naive_reference_and_keeps_its_promises(prompt, size):
    budget, query_tokens, chunk_tokens = size
    kw = dict(budget=budget, query_tokens=query_tokens, chunk_tokens=chunk_tokens)
    short = shorten_context(prompt, **kw)
    assert short == naive_shorten_context(prompt, **kw)
    kept = kept_indices(prompt, **kw)  # where the kept tokens stood (their rotary positions with keep_positions)
    assert [prompt[i] for i in kept] == short
    assert all(a < b for a, b in zip(kept, kept[1:])) and kept[-1] == len(prompt) - 1
    assert len(short) <= budget
    if len(prompt) <= budget:
        assert short == prompt
    else:
        query = prompt[-min(query_tokens, budget):]
        assert short[len(short) - len(query):] == query  # the query ends the draft's context
        context = prompt[: len(prompt) - len(query)]  # the chunks end where the query starts
        chunks = [context[i:i + chunk_tokens] for i in range(0, len(context), chunk_tokens)]
        body = short[: len(short) - len(query)]
        # The rest is whole chunks of the prompt, in prompt order.
        kept, pos = [], 0
        for i, chunk in enumerate(chunks):
            if body[pos:pos + len(chunk)] == chunk:
                kept.append(i)
                pos += len(chunk)
        assert pos == len(body)


def test_the_chunk_sharing_the_query_tokens_is_retrieved():
    filler = [1, 2, 3, 4] * 40  # 160 tokens of boilerplate
    needle = [50, 51, 52, 53]
    prompt = filler[:80] + needle * 2 + filler[80:] + [60, 50, 52, 61]  # the query asks about the needle
    short = shorten_context(prompt, budget=16, query_tokens=4, chunk_tokens=8)
    assert short == needle * 2 + [60, 50, 52, 61]


def test_context_study_views_pair_each_token_with_its_position():
    from declab.plugins.rapid.context_study import four_gram_share, views

    prompt = list(range(100, 400))  # 300 distinct tokens: retrieval keeps whole chunks, the query last
    v = views(prompt, 64)
    assert v["full"] == (prompt, list(range(300)))
    tokens, positions = v["rapid_keep_positions"]
    assert [prompt[p] for p in positions] == tokens == v["rapid"][0] and positions[-1] == 299
    assert v["rapid"][1] == list(range(len(tokens)))  # packed from 0
    assert v["recent"] == (prompt[-64:], list(range(64)))
    assert four_gram_share([1, 2, 3, 4, 5], [2, 3, 4, 5, 9]) == (1, 2)
