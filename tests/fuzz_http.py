"""Sending fuzz cases to a running server: one batch concurrently (threads), then the server must answer ``/health``
and a plain request."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from fuzz_cases import Case
from fuzz_checks import FuzzLog, Outcome

MODEL = "decoder-29m"  # helpers.declab_server's --served-model-name
TIMEOUT_S = 300
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def _error_message(response: requests.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return json.dumps(payload) if error is None else str(error)


def _stream_outcome(response: requests.Response) -> Outcome:
    """A 200 stream: an ``error`` event inside it is the answer (its code, 500 when it has none)."""
    for line in response.iter_lines():
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        if isinstance(event, dict) and "error" in event:
            error = event["error"] if isinstance(event["error"], dict) else {"message": str(event["error"])}
            return Outcome(int(error.get("code") or 500), str(error.get("message", "")), error="stream")
    return Outcome(200)


def _ok_outcome(case: Case, payload: dict[str, Any]) -> Outcome:
    choices = payload.get("choices") or []
    if not choices:
        return Outcome(502, f"200 without choices: {json.dumps(payload)[:300]}", error="no choices")
    ids = [c.get("token_ids") for c in choices]
    if any(i is None for i in ids):
        return Outcome(200)
    # min_tokens is checked only where a stop string (which ends a sequence whatever min_tokens) cannot interfere.
    counts = None if "stop" in case.sampling or "stop" in case.declab else [len(i) for i in ids]
    return Outcome(200, token_ids=ids, completion_tokens=counts)


def send(base: str, case: Case) -> Outcome:
    body = case.body(MODEL)
    if case.endpoint == "completions" and not body.get("stream"):
        body["return_token_ids"] = True
    try:
        # json.dumps, not requests' json=: NaN and Infinity are sent as the tokens Python's json module writes.
        with requests.post(base + PATHS[case.endpoint], data=json.dumps(body), timeout=TIMEOUT_S,
                           headers={"Content-Type": "application/json"}, stream=bool(body.get("stream"))) as r:
            if r.status_code != 200:
                return Outcome(r.status_code, _error_message(r))
            if body.get("stream") is True:
                return _stream_outcome(r)
            return _ok_outcome(case, r.json())
    except requests.RequestException as e:  # the connection broke: as bad as a 5xx
        return Outcome(599, f"{type(e).__name__}: {e}", error="connection")


def check_alive(base: str) -> None:
    """The server answers /health and a plain request after a batch."""
    health = requests.get(f"{base}/health", timeout=60)
    assert health.status_code == 200, f"/health answered {health.status_code} after a batch"
    plain = requests.post(f"{base}/v1/completions", timeout=TIMEOUT_S,
                          json={"model": MODEL, "prompt": "def f():", "max_tokens": 2, "temperature": 0})
    assert plain.status_code == 200, f"a plain request answered {plain.status_code} after a batch: {plain.text}"
    assert plain.json()["choices"][0]["text"] is not None


def run_batch(base: str, cases: list[Case], log: FuzzLog, threads: int = 16) -> None:
    cases = log.sendable(cases)
    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(lambda c: send(base, c), cases))
    for case, out in zip(cases, outcomes):
        log.record(case, out)
    log.batches += 1
    check_alive(base)
