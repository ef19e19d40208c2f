"""Equivalence: greedy CAD / LQCD / M3ID through vLLM (companion rows in the batch) give the same answers as a
two-pass transformers reference (``contrastive_reference.py``) on the fact-world dev sets.

CI runs the first ``DECLAB_CONTRASTIVE_ITEMS`` items of each set (default 100); the closing measurement ran all 400.
Acceptance: at least 99 % identical answers per method.
"""

from __future__ import annotations

import os
import time

import contrastive_reference as ref
import pytest
from contrastive_requests import engine_state, generate, load_items, requests_for

from declab.integrations.sdk.metrics import first_line_answer
from declab.integrations.models import eval_file

pytestmark = pytest.mark.engine
N_ITEMS = int(os.environ.get("DECLAB_CONTRASTIVE_ITEMS", "100"))
SET_OF = {"cad": "conflict", "lqcd": "leading", "m3id": "conflict"}


def engine_answers_of(llm, n: int) -> dict:
    """First-line answers of cad (conflict), lqcd (leading) and m3id (conflict) at alpha 0.5, all in one batch,
    with a newline stop string (the front-end ends the main request; its companion must go with it)."""
    conflict, leading = load_items(n)
    start = engine_state(llm)
    contrast = requests_for(conflict, leading, alpha=0.5)
    for _, _, sp in contrast:
        sp.stop = ["\n"]
    t0 = time.perf_counter()
    outs = generate(llm, [p for _, p, _ in contrast], [sp for _, _, sp in contrast])
    wall = time.perf_counter() - t0
    by_method: dict[str, list[str]] = {"cad": [], "lqcd": [], "m3id": []}
    for (name, _, _), out in zip(contrast, outs, strict=True):
        by_method[name.rstrip("0123456789")].append(first_line_answer(out["text"]))
    return {"n": n, "wall_s": wall, "answers": by_method, "start": start, "end": engine_state(llm)}


@pytest.fixture(scope="session")
def engine_answers(contrastive_engine):
    if eval_file("conflict_dev.jsonl") is None:
        pytest.skip("../shared/eval is not present")
    return contrastive_engine.run(engine_answers_of, N_ITEMS)


@pytest.fixture(scope="session")
def reference():
    model, tok = ref.load_model()
    return model, tok


@pytest.mark.parametrize("method", ["cad", "lqcd", "m3id"])
def test_engine_equals_two_pass_reference(engine_answers, reference, method):
    model, tok = reference
    params = {"alpha": 0.5} if method != "m3id" else {}
    expected = ref.run(method, SET_OF[method], params, limit=N_ITEMS, max_tokens=12, model=model, tok=tok)["answers"]
    got = engine_answers["answers"][method]
    assert len(got) == len(expected) == N_ITEMS
    differ = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    print(f"{method}: {N_ITEMS - len(differ)}/{N_ITEMS} identical answers; differing: {differ[:10]}")
    assert (N_ITEMS - len(differ)) / N_ITEMS >= 0.99, differ[:10]


def test_stop_strings_free_the_companions(engine_answers):
    start, end = engine_answers["start"], engine_answers["end"]
    assert end["requests_left"] == 0 and end["pairs_left"] == 0
    assert end["free_blocks"] == start["free_blocks"]
