"""declab's metrics on vLLM's ``/metrics`` (``integrations/stat_logger.py``, ``patches/plugin_stats.py``): requests and
rejections by plugin, companion rows under load, speculative acceptance of a proposer plugin; and none of it when no
plugin is selected."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from engines import greedy_run
from prometheus_client.parser import text_string_to_metric_families

CONTEXT_PROMPT = "Context: Mikagro Works is headquartered in Marrator.\nQuestion: Where is Mikagro Works headquartered?\nAnswer:"
NO_CONTEXT_PROMPT = "Question: Where is Mikagro Works headquartered?\nAnswer:"


# -- reading /metrics ----------------------------------------------------------------------------------------------


def scrape(base: str) -> list[tuple[str, dict[str, str], float]]:
    text = requests.get(f"{base}/metrics", timeout=10).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items()))


def declab_names(samples) -> set[str]:
    return {n for n, _, _ in samples if n.startswith("declab:")}


def _wait_idle(base: str) -> list:
    """/metrics once the engine has reported an empty scheduler (the last step's stats arrive after the last
    response)."""
    deadline = time.time() + 60
    while True:
        samples = scrape(base)
        if value(samples, "vllm:num_requests_running") == 0 and value(samples, "vllm:num_requests_waiting") == 0:
            return samples
        assert time.time() < deadline, "the scheduler did not report idle"
        time.sleep(0.5)


def _complete(base: str, xargs: dict | None = None, **extra) -> requests.Response:
    body = {"model": "decoder-29m", "prompt": CONTEXT_PROMPT, "max_tokens": 8, "temperature": 0, **extra}
    if xargs:
        body["vllm_xargs"] = xargs
    return requests.post(f"{base}/v1/completions", json=body, timeout=300)


# -- label values (no engine) -------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra_args,message,plugin,reason", [
    ({"declab.method": "momentum"}, "declab.alpha must be <= 10.0, got 99.0", "momentum", "declab.alpha"),
    ({"declab": {"method": "cad"}}, "presence_penalty is not supported together with", "cad", "presence_penalty"),
    ({"declab.method": "momentum"}, "declab.zzz is not a parameter of this method", "momentum", "declab.<unknown>"),
    ({"declab.method": "x" * 500}, "declab.method: unknown method", "unknown", "declab.method"),
    ({"declab.method": ["a"]}, "declab.method: unknown method", "unknown", "declab.method"),
    ({"declab": 3}, "declab must be an object", "unknown", "declab"),
    ({"declab.method": "cad"}, "a message naming \u2603 nothing", "cad", "other"),
])
def test_rejection_labels_are_bounded(extra_args, message, plugin, reason):
    """Label values come from plugin and parameter names, never from request text (unbounded cardinality)."""
    from prometheus_client import REGISTRY

    from declab.integrations.stat_logger import AdmissionMetrics, unregister_declab_metrics

    unregister_declab_metrics()
    try:
        AdmissionMetrics("m").rejection(extra_args, ValueError(message))
        labels = {"model_name": "m", "plugin": plugin, "reason": reason}
        assert REGISTRY.get_sample_value("declab:request_rejections_total", labels) == 1
    finally:
        unregister_declab_metrics()


# -- servers -------------------------------------------------------------------------------------------------------


def test_requests_and_rejections_by_plugin(momentum_server):
    base = momentum_server
    before = scrape(base)
    for alpha in (0.1, 0.2, 0.3):
        assert _complete(base, {"declab.method": "momentum", "declab.alpha": alpha}).status_code == 200
    assert _complete(base).status_code == 200  # plain: no declab metric moves
    bad = [({"declab.method": "momentum", "declab.alpha": 99.0}, ("momentum", "declab.alpha")),
           ({"declab.method": "momentum", "declab.nope": 1}, ("momentum", "declab.<unknown>")),
           ({"declab.method": "extractive", "declab.passage": "x"}, ("extractive", "declab.method")),  # not enabled
           ({"declab.method": "no-such-plugin-\u00e9"}, ("unknown", "declab.method"))]
    for xargs, _ in bad:
        assert _complete(base, xargs).status_code == 400
    after = _wait_idle(base)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("declab:requests_total", plugin="momentum", model_name="decoder-29m") == 3
    assert delta("declab:requests_total") == 3
    for _, (plugin, reason) in bad:
        assert delta("declab:request_rejections_total", plugin=plugin, reason=reason) == 1, (plugin, reason)
    assert delta("declab:request_rejections_total") == len(bad)
    # Only the metrics a selected plugin can move: momentum has no companion rows and drafts nothing.
    assert declab_names(after) == {"declab:requests_total", "declab:requests_created",
                                   "declab:request_rejections_total", "declab:request_rejections_created"}


def _stream(base: str, xargs: dict | None, started: threading.Event) -> str:
    body = {"model": "decoder-29m", "prompt": CONTEXT_PROMPT, "max_tokens": 160, "temperature": 0,
            "ignore_eos": True, "stream": True}
    if xargs:
        body["vllm_xargs"] = xargs
    text = []
    with requests.post(f"{base}/v1/completions", json=body, timeout=600, stream=True) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            started.set()
            if line.startswith(b"data: {"):
                text.append(line.decode())
    return "".join(text)


def test_companion_rows_under_load(contrastive_server):
    """CAD and LQCD requests streamed next to plain ones: while they run, /metrics shows their companion rows (one per
    request, inside vllm:num_requests_running); after, the gauges are back to 0 and the counters moved by exactly the
    admitted and refused requests."""
    base = contrastive_server
    cad = {"declab.method": "cad", "declab.alpha": 0.5, "declab.contrast_prompt": NO_CONTEXT_PROMPT}
    lqcd = {"declab.method": "lqcd", "declab.alpha": 0.5, "declab.contrast_prompt": NO_CONTEXT_PROMPT}
    load = [cad] * 4 + [lqcd] * 2 + [None] * 2
    before = scrape(base)
    started = [threading.Event() for _ in load]
    during = []
    with ThreadPoolExecutor(len(load)) as pool:
        streams = [pool.submit(_stream, base, xargs, ev) for xargs, ev in zip(load, started)]
        for ev in started:
            assert ev.wait(300), "a stream did not start"
        refused = [
            (_complete(base, {"declab.method": "cad", "declab.alpha": 0.5}), "declab.contrast_prompt"),  # missing
            (_complete(base, cad, presence_penalty=0.5), "presence_penalty"),  # refused for request groups
            # Too long for the model: refused by the prompt-rendering seam, after the router admitted it.
            (_complete(base, {**cad, "declab.contrast_prompt": "word " * 3000}), "declab.contrast_prompt"),
        ]
        while not all(s.done() for s in streams):
            samples = scrape(base)
            if value(samples, "declab:companion_rows_running") > 0:
                during.append(samples)
            time.sleep(0.2)
        for s in streams:
            assert s.result()
    after = _wait_idle(base)

    for response, reason in refused:
        assert response.status_code == 400 and reason in response.text, response.text
    assert during, "declab:companion_rows_running stayed 0 while CAD / LQCD requests streamed"
    for samples in during:
        companions = value(samples, "declab:companion_rows_running")
        assert companions <= 6  # one per CAD / LQCD request
        assert value(samples, "vllm:num_requests_running") >= companions  # vLLM counts them as requests
    assert value(after, "declab:companion_rows_running") == 0
    assert value(after, "declab:companion_rows_waiting") == 0

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("declab:requests_total", plugin="cad") == 4
    assert delta("declab:requests_total", plugin="lqcd") == 2
    assert delta("declab:request_rejections_total", plugin="cad", reason="declab.contrast_prompt") == 2
    assert delta("declab:request_rejections_total", plugin="cad", reason="presence_penalty") == 1
    assert delta("declab:request_rejections_total") == 3


# -- engines (offline LLM: the same stat loggers, read from the process's registry) --------------------------------


def _registry_samples() -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client import REGISTRY

    return [(s.name, s.labels, s.value) for family in REGISTRY.collect() for s in family.samples]


def _spec_run(llm, prompts: list[str]) -> dict:
    before = _registry_samples()
    greedy_run(llm, prompts, 32)
    after = _registry_samples()
    out = {}
    for field in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        for prefix, labels in (("vllm", {}), ("declab", {"plugin": "token_recycling"})):
            name = f"{prefix}:spec_decode_{field}_total"
            out[name] = value(after, name, **labels) - value(before, name, **labels)
    return out


def test_speculative_acceptance_of_a_proposer_plugin(tr_chain_engine):
    from profiles import STACK_PROMPT

    counts = tr_chain_engine.run(_spec_run, [STACK_PROMPT, "def fibonacci(n):\n    "])
    assert counts["declab:spec_decode_num_accepted_tokens_total"] > 0, counts
    for field in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        assert counts[f"declab:spec_decode_{field}_total"] == counts[f"vllm:spec_decode_{field}_total"], counts


def _stat_loggers_register(llm) -> dict:
    """Build vLLM's stat loggers for this engine as a server would; what they registered, and which classes vLLM's
    metrics module and SchedulerStats carry patched."""
    from prometheus_client import REGISTRY
    from vllm.v1.metrics.loggers import StatLoggerManager
    from vllm.v1.metrics.stats import SchedulerStats

    StatLoggerManager(llm.llm_engine.vllm_config, enable_default_loggers=False)
    names = {n for collector_names in REGISTRY._collector_to_names.values() for n in collector_names}
    return {"declab": sorted(n for n in names if n.startswith("declab:")),
            "vllm": any(n.startswith("vllm:") for n in names),
            "patched": sorted(StatLoggerManager.__dict__.get("_declab_patched", {}))
            + sorted(SchedulerStats.__dict__.get("_declab_patched", {}))}


def test_installed_but_unselected_registers_no_metric(installed_engine):
    found = installed_engine.run(_stat_loggers_register)
    assert found["vllm"]  # vLLM's own metrics were registered
    assert found["declab"] == [] and found["patched"] == []
