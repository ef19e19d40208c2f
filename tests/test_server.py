"""A running ``declab serve``: per-request plugin selection over the OpenAI API, HTTP 400 for bad arguments."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.server


@pytest.fixture
def server(momentum_server):
    """``declab serve --plugins momentum``, shared by this module's tests (profiles.SERVERS)."""
    return momentum_server


def _complete(base, **extra):
    body = {"model": "decoder-29m", "prompt": "def fibonacci(n):\n    ", "max_tokens": 24, "temperature": 0}
    body.update(extra)
    return requests.post(f"{base}/v1/completions", json=body, timeout=120)


def test_plain_and_plugin_requests(server):
    plain = _complete(server)
    mom = _complete(server, vllm_xargs={"declab.method": "momentum", "declab.alpha": 0.3})
    assert plain.status_code == 200 and mom.status_code == 200
    assert plain.json()["choices"][0]["text"] != mom.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    "xargs,name",
    [
        ({"declab.method": "nope"}, "declab.method"),
        ({"declab.method": "momentum", "declab.alpha": 99.0}, "declab.alpha"),
        ({"declab.method": "momentum", "declab.top_k": 0}, "declab.top_k"),
        ({"declab.method": "extractive", "declab.passage": "x"}, "not enabled"),
    ],
)
def test_bad_arguments_get_http_400_and_the_server_keeps_serving(server, xargs, name):
    bad = _complete(server, vllm_xargs=xargs)
    assert bad.status_code == 400, bad.text
    assert name in bad.text
    assert _complete(server).status_code == 200


def test_chat_completions_carry_the_same_arguments(server):
    body = {"model": "decoder-29m", "messages": [{"role": "user", "content": "def f():"}], "max_tokens": 8,
            "temperature": 0, "vllm_xargs": {"declab.method": "momentum"}}
    ok = requests.post(f"{server}/v1/chat/completions", json=body, timeout=120)
    assert ok.status_code == 200, ok.text
    body["vllm_xargs"]["declab.alpha"] = -1.0
    r = requests.post(f"{server}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 400 and "declab.alpha" in r.text
