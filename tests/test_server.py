"""A running ``declab serve``: per-request plugin selection over the OpenAI API, HTTP 400 for bad arguments."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.server
CHAT_TEMPLATE = Path(__file__).resolve().parent.parent / "examples" / "chat_template.jinja"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "DECLAB_PLUGINS"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "declab.integrations.cli", "serve", "--plugins", "momentum",
             "--", "--host", "127.0.0.1", "--port", str(port), "--gpu-memory-utilization", "0.3",
             "--served-model-name", "decoder-29m", "--chat-template", str(CHAT_TEMPLATE)],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(2)
        else:
            pytest.fail(f"server did not become healthy:\n{log.read_text()[-4000:]}")
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


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
