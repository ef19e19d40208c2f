"""``declab serve`` with its own defaults, as a user starts it: no memory flag, no chat template flag.

* The KV cache is sized for the served model (``serve_memory``), not 92 % of the machine: the start-up line says how
  much, vLLM's own line and ``/metrics`` (``vllm:cache_config_info``) agree. The decision when other processes hold
  most of the memory is unit-tested in ``test_serve_memory.py`` (vLLM's check reads available memory; an explicit size
  only has to fit in it).
* Chat completions work on the bundled model (its ``tokenizer_config.json`` carries a chat template), over HTTP and
  offline with ``LLM.chat``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests
from engines import die_with_parent
from helpers import CHAT_TEMPLATE, child_env, declab_server

from declab.integrations.engine_run import IN_PROCESS_ENGINE_ENV
from declab.integrations.models import BUNDLED_MODEL

MAX_NUM_SEQS = 4  # not a memory flag: the sizing follows it (4 x 2048 tokens x 16 KiB = 128 MiB)
KV_BYTES = MAX_NUM_SEQS * 2048 * 16 * 1024


def _cache_config_info(base: str) -> dict[str, str]:
    for line in requests.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            return dict(re.findall(r'(\w+)="([^"]*)"', line))
    raise AssertionError("vllm:cache_config_info not on /metrics")


@pytest.mark.server
@pytest.mark.usefixtures("no_shared_engine")
def test_declab_serve_without_flags_sizes_the_kv_cache_for_the_model_and_serves_chat(tmp_path):
    log = tmp_path / "serve.log"
    env = {"VLLM_CPU_KVCACHE_SPACE": None}  # vLLM's CPU default would reserve 92 % of the machine
    with declab_server("", log, "--max-num-seqs", str(MAX_NUM_SEQS), test_args=(), env=env) as base:
        text = log.read_text()
        assert "declab serve: KV cache 128 MiB per worker (8192 tokens)" in text, text[-4000:]
        assert f"--kv-cache-memory-bytes {KV_BYTES}" in text
        assert "Explicitly set (0.12" in text  # vLLM's worker: "Explicitly set (0.12/23.4) GiB for KV cache"
        info = _cache_config_info(base)
        assert info["kv_cache_memory_bytes"] == str(KV_BYTES), info

        body = {"model": "decoder-29m", "messages": [{"role": "user", "content": "Where is Mikagro Works?"}],
                "max_tokens": 8, "temperature": 0}
        chat = requests.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"]


CHAT_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=512, enforce_eager=True)
out = llm.chat([{"role": "user", "content": "def f():"}], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
print("RESULT " + json.dumps({"prompt": out[0].prompt, "text": out[0].outputs[0].text}))
"""


@pytest.mark.engine
@pytest.mark.usefixtures("no_shared_engine")
def test_llm_chat_works_offline_on_the_bundled_model():
    proc = subprocess.run([sys.executable, "-c", CHAT_SCRIPT, str(BUNDLED_MODEL)], capture_output=True, text=True,
                          timeout=900, env=child_env(**IN_PROCESS_ENGINE_ENV), start_new_session=True,
                          preexec_fn=die_with_parent())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["prompt"] == "User: def f():\nAssistant:"  # the bundled template
    assert result["text"]


def test_the_bundled_template_is_the_examples_one():
    config = json.loads((BUNDLED_MODEL / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE.read_text()
