"""Issue #18's decoders under load through a running ``declab serve``: 64 concurrent requests mixing plain rows with
classifier-free guidance, LOL and Superposed Decoding (the ``all_logits`` server: every logits plugin selected), and
plain rows with contrastive search (its proposer's server), a fifth of them streamed and dropped after two chunks
(the server aborts them). Every finished request answers 200 with what the offline engine answers to the same
request alone in its batch (greedy methods token for token; Superposed's k completions as a set), and afterwards no
request is running or waiting and the KV cache is empty: aborted requests and the rows they own (CFG's companion,
Superposed's k children) are freed.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from helpers import assert_idle_and_empty, stream_and_abort

from declab.integrations.models import eval_file
from declab.integrations.prompts import CODE_PROMPTS

pytestmark = pytest.mark.server
N_CONCURRENT = 64
MAX_TOKENS = 12
SUPERPOSED_K = 3
ABORT_EVERY = 5  # request i is streamed and dropped when i % ABORT_EVERY == ABORT_EVERY - 1 (12 of 64)


def _conflict_items() -> list[dict]:
    path = eval_file("conflict_dev.jsonl")
    if path is None:
        pytest.skip("../shared/eval is not present")
    return [json.loads(x) for x in path.read_text().splitlines()]


def guidance_jobs() -> list[tuple[str, str, dict, dict]]:
    """``(kind, prompt, declab arguments, more sampling options)`` for the ``all_logits`` server, kinds in turn."""
    items = _conflict_items()
    jobs = []
    for i in range(N_CONCURRENT):
        item = items[(i // 4) % len(items)]  # a plain row and a CFG row of each item
        kind = ("plain", "cfg", "lol", "superposed")[i % 4]
        if kind == "plain":
            jobs.append((kind, item["prompt_with_context"], {}, {}))
        elif kind == "cfg":
            jobs.append((kind, item["prompt_with_context"],
                         {"method": "cfg", "guidance_scale": 1.5, "negative_prompt": item["prompt_without_context"]},
                         {}))
        elif kind == "lol":
            jobs.append((kind, item["prompt_without_context"], {"method": "lol"}, {}))
        else:
            jobs.append((kind, CODE_PROMPTS[i % len(CODE_PROMPTS)], {"method": "superposed", "k": SUPERPOSED_K},
                         {"n": SUPERPOSED_K, "temperature": 1.0}))
    return jobs


def search_jobs() -> list[tuple[str, str, dict, dict]]:
    """Plain rows and contrastive search, in turn, for the contrastive search server."""
    prompts = list(CODE_PROMPTS) + [it["prompt_with_context"] for it in _conflict_items()]
    search = {"method": "contrastive_search", "top_k": 4, "alpha": 0.6}
    return [("contrastive_search", prompts[i % len(prompts)], search, {}) if i % 2 else
            ("plain", prompts[i % len(prompts)], {}, {}) for i in range(N_CONCURRENT)]


def offline_answers(llm, jobs: list[tuple[str, str, dict, dict]]) -> list[list[str]]:
    """Each job alone (one generate per job): its completions' texts in index order."""
    from vllm import SamplingParams

    out = []
    for _, prompt, declab, more in jobs:
        params = SamplingParams(**{"temperature": 0.0, "max_tokens": MAX_TOKENS, **more},
                                extra_args={"declab": declab} if declab else None)
        result = llm.generate([prompt], params, use_tqdm=False)[0]
        out.append([c.text for c in sorted(result.outputs, key=lambda c: c.index)])
    return out


def _body(prompt: str, declab: dict, more: dict) -> dict:
    body = {"model": "decoder-29m", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, **more}
    if declab:
        body["vllm_xargs"] = {f"declab.{k}": v for k, v in declab.items()}
    return body


def run_concurrently(base: str, jobs: list[tuple[str, str, dict, dict]]) -> list[list[str] | None]:
    """All jobs at once; a fifth streamed and dropped (None), the others' completion texts in index order."""

    def one(i: int):
        _, prompt, declab, more = jobs[i]
        body = _body(prompt, declab, more)
        if i % ABORT_EVERY == ABORT_EVERY - 1:
            stream_and_abort(base, body)
            return None
        r = requests.post(f"{base}/v1/completions", json=body, timeout=600)
        assert r.status_code == 200, (jobs[i][0], r.status_code, r.text)
        return [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]

    with ThreadPoolExecutor(N_CONCURRENT) as pool:
        return list(pool.map(one, range(len(jobs))))


def check(base: str, jobs, expected) -> None:
    got = run_concurrently(base, jobs)
    assert sum(g is None for g in got) == N_CONCURRENT // ABORT_EVERY
    for (kind, prompt, _, _), want, have in zip(jobs, expected, got, strict=True):
        if have is None:
            continue
        if kind == "superposed":  # k completions; their order among equals is not part of the contract
            assert len(have) == SUPERPOSED_K and sorted(have) == sorted(want), (prompt[:60], have, want)
        else:
            assert have == want, (kind, prompt[:60])
    assert_idle_and_empty(base)


@pytest.fixture(scope="module")
def guidance_offline(all_logits_engine):
    jobs = guidance_jobs()
    return jobs, all_logits_engine.run(offline_answers, jobs)


@pytest.fixture(scope="module")
def search_offline(contrastive_search_engine):
    jobs = search_jobs()
    return jobs, contrastive_search_engine.run(offline_answers, jobs)


def test_cfg_lol_superposed_and_plain_rows_concurrently_with_aborts(guidance_offline, all_logits_server):
    jobs, expected = guidance_offline
    # CFG changes answers here, so a server that ignored it would fail check()'s equality.
    plain = {p: e for (k, p, _, _), e in zip(jobs, expected) if k == "plain"}
    assert any(e != plain[p] for (k, p, _, _), e in zip(jobs, expected) if k == "cfg" and p in plain)
    check(all_logits_server, jobs, expected)


def test_contrastive_search_and_plain_rows_concurrently_with_aborts(search_offline, contrastive_search_server):
    jobs, expected = search_offline
    check(contrastive_search_server, jobs, expected)
