"""Helpers shared by the engine and server tests: a child process's environment and a running ``declab serve``."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
import tokenize
from pathlib import Path
from typing import Iterator

import requests

from declab.integrations import engine_run

CHAT_TEMPLATE = Path(__file__).resolve().parent.parent / "examples" / "chat_template.jinja"


def child_env(**env: str | None) -> dict[str, str]:
    """The test process's environment without DECLAB_PLUGINS, with ``env`` applied (None removes a key)."""
    return engine_run.child_env({"DECLAB_PLUGINS": None, **env})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What the shared test servers add to `declab serve`'s defaults: a small memory share, the example chat template.
TEST_SERVE_ARGS = ("--gpu-memory-utilization", "0.3", "--chat-template", str(CHAT_TEMPLATE))


def declab_serve_argv(plugins: str, port: int, *vllm_args: str,
                      test_args: tuple[str, ...] = TEST_SERVE_ARGS) -> list[str]:
    """``declab serve --plugins PLUGINS`` on the default model at 127.0.0.1:PORT, served as ``decoder-29m``."""
    return [sys.executable, "-m", "declab.integrations.cli", "serve", "--plugins", plugins, "--", "--host",
            "127.0.0.1", "--port", str(port), "--served-model-name", "decoder-29m", *test_args, *vllm_args]


def wait_healthy(proc: subprocess.Popen, base: str, log: Path, startup_s: float = 600) -> None:
    """Until the server at ``base`` answers ``/health``; AssertionError with its log if it exits or takes too long."""
    deadline = time.time() + startup_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.time() > deadline:
            raise AssertionError(f"server did not become healthy:\n{log.read_text()[-4000:]}")
        time.sleep(2)


@contextlib.contextmanager
def declab_server(plugins: str, log: Path, *vllm_args: str, startup_s: float = 600,
                  env: dict[str, str | None] | None = None, preexec_fn=None,
                  test_args: tuple[str, ...] = TEST_SERVE_ARGS) -> Iterator[str]:
    """``declab serve --plugins PLUGINS`` on the default model; yields the base URL, stops the server after.
    ``env`` changes the server's environment (None removes a key); ``preexec_fn`` runs in the child before exec;
    ``test_args=()`` leaves `declab serve`'s own defaults (memory, chat template) alone."""
    port = free_port()
    with open(log, "w") as fh:
        proc = subprocess.Popen(declab_serve_argv(plugins, port, *vllm_args, test_args=test_args), stdout=fh,
                                stderr=subprocess.STDOUT, env=child_env(**(env or {})), start_new_session=True,
                                preexec_fn=preexec_fn)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base, log, startup_s)
        yield base
    finally:
        # The server's whole process group (API server, engine core, worker): SIGTERM, SIGKILL after 60 s.
        engine_run.kill_group(proc.pid, grace_s=60, proc=proc)
        proc.wait()


def prometheus_value(base: str, metric: str) -> float:
    """Sum of a metric's samples on the server's /metrics page."""
    total, found = 0.0, False
    for line in requests.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(metric) and (line[len(metric)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{metric} not on /metrics"
    return total


def stream_and_abort(base: str, body: dict, keep_chunks: int = 2, timeout: float = 600) -> int:
    """Stream a long completion and drop the connection after ``keep_chunks`` chunks (the server aborts it)."""
    got = 0
    with requests.post(f"{base}/v1/completions", json={**body, "stream": True, "max_tokens": 400},
                       stream=True, timeout=timeout) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                got += 1
                if got >= keep_chunks:
                    break
    return got


def assert_idle_and_empty(base: str, wait_s: int = 60) -> None:
    """No request running or waiting and the KV cache empty (polled: aborts are processed asynchronously)."""
    metrics = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
    for _ in range(wait_s):
        if all(prometheus_value(base, m) == 0 for m in metrics):
            break
        time.sleep(1)
    for metric in metrics:
        assert prometheus_value(base, metric) == 0, metric


def assert_lossless(outputs: list[list[int]], reference: list[list[int]], accepted: float, what: str = "") -> None:
    """A speculative run is lossless: one output per reference row, each token-identical to it, and drafts were
    really accepted (``accepted``: accepted draft tokens over the run). A proposer that never drafts is trivially
    identical to vanilla, so identity alone proves nothing about the verifier."""
    assert len(outputs) == len(reference) > 0, f"{what}: {len(outputs)} outputs for {len(reference)} reference rows"
    mismatches = [i for i, (a, b) in enumerate(zip(outputs, reference, strict=True)) if a != b]
    assert not mismatches, f"{what}: rows {mismatches} differ from the reference"
    assert accepted > 0, f"{what}: no draft token was accepted, so the run never speculated"


# -- source text a layering check reads --------------------------------------------------------------------------
_F_PREFIX = re.compile(r"[rRbB]?[fF]")  # an f-string's prefix
_FIELD = re.compile(r"\{[^{}]*\}")  # one replacement field of an f-string


def text_outside_identifiers(path: Path) -> list[tuple[int, str]]:
    """(line, text) of what can name a plugin in a file: for Python, its strings and comments (a local variable
    that happens to spell a plugin's name, e.g. ``cfg`` for a configuration, selects nothing); else every line."""
    if path.suffix != ".py":
        return list(enumerate(path.read_text().splitlines(), 1))
    with path.open("rb") as f:
        tokens = [tok for tok in tokenize.tokenize(f.readline) if tok.type in (tokenize.STRING, tokenize.COMMENT)]
    # An f-string's replacement fields are expressions (identifiers again), not text.
    return [(tok.start[0], _FIELD.sub("{}", tok.string) if _F_PREFIX.match(tok.string) else tok.string)
            for tok in tokens]


def assert_mixed_tree_batch(out: dict, greedy_reference: list[list[int]], greedy_rows: dict[str, int]) -> None:
    """``engines.mixed_tree_batch``'s result: its greedy rows (``greedy_rows``: request id -> prompt index) equal
    ``greedy_reference``, the logprob row got a logprob per token, the sampled rows finished, the aborted rows
    stopped midway, trees and chains were both drafted, and no request or KV block is left behind."""
    got = out["outputs"]
    assert_lossless([got[r]["token_ids"] for r in greedy_rows], [greedy_reference[i] for i in greedy_rows.values()],
                    out["spec"]["num_accepted_tokens"], "tree + chains, mixed batch")
    assert got["logprobs"]["logprobs_steps"] == len(got["logprobs"]["token_ids"])
    for rid in ("t1", "t07_p09_seeded", "penalty"):  # sampled rows finished (length or EOS)
        assert got[rid]["finished"] and got[rid]["finish_reason"] in ("length", "stop"), (rid, got[rid])
    for rid in ("aborted_t1", "aborted_greedy"):  # stopped midway, never finished
        assert not got[rid]["finished"] and len(got[rid]["token_ids"]) < 64, got[rid]
    assert out["stats"]["tree_drafts"] > 0 and out["stats"]["chain_drafts"] > 0, out["stats"]
    assert out["requests_left"] == 0
    assert out["free_blocks"][1] == out["free_blocks"][0], out["free_blocks"]
