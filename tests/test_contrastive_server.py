"""Contrastive decoding through a running ``declab serve --plugins cad,lqcd``: HTTP 400 for bad input, and 64
concurrent plain / CAD / LQCD requests (some aborted midway) that all finish, equal the same requests run alone,
and leave the KV cache as they found it."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from helpers import prometheus_value

from declab.integrations.models import eval_file

pytestmark = pytest.mark.server
N_CONCURRENT = 64


@pytest.fixture
def server(contrastive_server):
    """``declab serve --plugins cad,lqcd``, shared by this module's tests (profiles.SERVERS)."""
    return contrastive_server


@pytest.fixture(autouse=True)
def _needs_eval_data():
    if eval_file("conflict_dev.jsonl") is None:
        pytest.skip("../shared/eval is not present")


def _items():
    conflict = [json.loads(x) for x in eval_file("conflict_dev.jsonl").read_text().splitlines()]
    leading = [json.loads(x) for x in eval_file("leading_dev.jsonl").read_text().splitlines()]
    return conflict, leading


def _body(prompt, xargs=None, **extra):
    body = {"model": "decoder-29m", "prompt": prompt, "max_tokens": 12, "temperature": 0}
    if xargs:
        body["vllm_xargs"] = xargs
    body.update(extra)
    return body


def _post(base, body, timeout=300):
    return requests.post(f"{base}/v1/completions", json=body, timeout=timeout)


def _cad(item, **more):
    return {"declab.method": "cad", "declab.alpha": 0.5, "declab.contrast_prompt": item["prompt_without_context"],
            **more}


@pytest.mark.parametrize(
    "xargs,extra,needle",
    [
        ({"declab.method": "cad", "declab.alpha": 0.5}, {}, "declab.contrast_prompt"),
        ({"declab.method": "cad", "declab.contrast_prompt": "Q:", "declab.alpha": 11.0}, {}, "declab.alpha"),
        ({"declab.method": "cad", "declab.contrast_prompt": "Q:", "declab.alpha": "x"}, {}, "declab.alpha"),
        ({"declab.method": "m3id", "declab.contrast_prompt": "Q:"}, {}, "not enabled"),
        ({"declab.method": "cad", "declab.contrast_prompt": "word " * 3000}, {}, "declab.contrast_prompt"),
        ({"declab.method": "cad", "declab.contrast_prompt": "Q:"}, {"repetition_penalty": 1.3}, "repetition_penalty"),
    ],
)
def test_bad_input_is_rejected_with_400(server, xargs, extra, needle):
    r = _post(server, _body("Question: Where is it?\nAnswer:", xargs, **extra))
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    assert _post(server, _body("Question: Where is it?\nAnswer:")).status_code == 200


def test_chat_request_with_contrast_prompt(server):
    conflict, _ = _items()
    item = conflict[0]
    body = {"model": "decoder-29m", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": item["prompt_with_context"]}],
            "vllm_xargs": _cad(item)}
    r = requests.post(f"{server}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] is not None


def _stream_and_abort(base, body, keep_chunks=2) -> int:
    """Stream a long request and drop the connection after a few chunks (the server aborts it)."""
    got = 0
    with requests.post(f"{base}/v1/completions", json={**body, "stream": True, "max_tokens": 400},
                       stream=True, timeout=300) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                got += 1
                if got >= keep_chunks:
                    break
    return got


def test_concurrent_mixed_requests_with_aborts(server):
    conflict, leading = _items()
    jobs = []  # (kind, body)
    for i in range(N_CONCURRENT):
        c, q = conflict[i], leading[i]
        kind = ("plain", "cad", "lqcd")[i % 3]
        if kind == "plain":
            body = _body(c["prompt_with_context"])
        elif kind == "cad":
            body = _body(c["prompt_with_context"], _cad(c))
        else:
            body = _body(q["leading_prompt"], {"declab.method": "lqcd", "declab.alpha": 0.5,
                                               "declab.contrast_prompt": q["neutral_prompt"]})
        jobs.append(("abort" if i % 4 == 3 else kind, body))

    def run(job):
        kind, body = job
        if kind == "abort":
            return kind, _stream_and_abort(server, body)
        r = _post(server, body)
        assert r.status_code == 200, r.text
        return kind, r.json()["choices"][0]["text"]

    with ThreadPoolExecutor(N_CONCURRENT) as pool:
        results = list(pool.map(run, jobs))
    assert sum(1 for kind, _ in results if kind == "abort") == N_CONCURRENT // 4

    # Every finished greedy output equals the same request run alone.
    for (kind, body), (_, text) in zip(jobs, results, strict=True):
        if kind != "abort":
            alone = _post(server, body).json()["choices"][0]["text"]
            assert text == alone, (kind, body["prompt"][:60])

    # Aborted requests and their companions are gone and the KV cache is back to empty.
    for _ in range(60):
        if (prometheus_value(server, "vllm:num_requests_running") == 0
                and prometheus_value(server, "vllm:num_requests_waiting") == 0):
            break
        time.sleep(1)
    assert prometheus_value(server, "vllm:num_requests_running") == 0
    assert prometheus_value(server, "vllm:num_requests_waiting") == 0
    assert prometheus_value(server, "vllm:kv_cache_usage_perc") == 0.0
