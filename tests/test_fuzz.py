"""Fuzz suite (issue #13): requests generated from every plugin's declared parameters, combined with vLLM's own
sampling options, sent through HTTP (a ``declab serve`` with every logits plugin; in sized runs one per proposer)
and offline (the shared engine profiles' ``LLM``). Properties (``fuzz_checks``): no answer >= 500, every 4xx (offline: every
ValueError) names a parameter the case sent, arguments the declaration refuses are refused, and the server (the
engine) still answers ``/health`` and a plain request after every batch. Known bugs being fixed elsewhere are
counted, not failed (``fuzz_checks.KNOWN``).

Size: ``DECLAB_FUZZ_CASES`` cases per plugin and channel (unset, as in ``make test``: a few batches per plugin and
channel, and the proposer's server is not started; its requests are fuzzed offline). The full run::

    make fuzz        # DECLAB_FUZZ_CASES=1000, report in measurements/fuzz.json

``DECLAB_FUZZ_REPORT=PATH`` writes the summary report of any run; ``DECLAB_FUZZ_SEED`` changes the draws;
``DECLAB_FUZZ_PLUGINS=a,b`` fuzzes only these plugins.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from engines import ServerProfile
from fuzz_cases import Case, batches, case_budget, plugin_cases, search_cases, settings_cases
from fuzz_checks import FuzzLog, FuzzReport, Outcome
from fuzz_http import MODEL, run_batch
from helpers import CHAT_TEMPLATE
from hypothesis import HealthCheck, Phase, given, seed, settings
from profiles import PROFILES

from declab.integrations import registry
from declab.integrations.sdk.runtime import check_engine_config_section
from declab.integrations.sdk.spec import load_object

HTTP_CASES = case_budget(48)  # per plugin; make test: three batches (hypothesis draws its simplest batch first)
OFFLINE_CASES = case_budget(16)
SETTINGS_CASES = case_budget(200)  # no engine: cheap
BATCH = 16
SEED = int(os.environ.get("DECLAB_FUZZ_SEED", "13"))
REPORT = FuzzReport()

# DECLAB_FUZZ_PLUGINS=a,b (make fuzz FUZZ_PLUGINS=a,b): only these plugins.
ONLY = {n for n in os.environ.get("DECLAB_FUZZ_PLUGINS", "").split(",") if n}
SPECS = {n: s for n, s in registry.all_specs().items() if not ONLY or n in ONLY}
LOGITS = [n for n, s in SPECS.items() if s.hook == registry.HOOK_LOGITS]
PROPOSERS = [n for n, s in SPECS.items() if s.hook == registry.HOOK_PROPOSER]
SEARCHES = [n for n, s in SPECS.items() if s.hook == registry.HOOK_SEARCH]
WITH_SETTINGS = [n for n, s in SPECS.items() if s.settings]


@pytest.fixture(scope="module", autouse=True)
def _write_report():
    yield
    REPORT.write()


def fuzz(strategy, n_cases: int, run: "callable", batch: int = BATCH) -> None:
    """Draw ``n_cases`` cases in batches of ``batch`` and ``run(cases)`` each batch (hypothesis, seeded; no shrinking:
    every answer is recorded and judged, the failures listed with their case)."""

    @settings(max_examples=math.ceil(n_cases / batch), deadline=None, database=None, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    @seed(SEED)
    @given(batches(strategy, batch))
    def one(cases: list[Case]) -> None:
        run(cases)

    one()


def _offline_profile(plugin: str):
    """The first engine profile that selects ``plugin`` (a search loop needs none: the ``installed`` engine)."""
    for profile in PROFILES:
        selected = (profile.plugins or "").split(",")
        if plugin in selected or (SPECS[plugin].hook == registry.HOOK_SEARCH and profile.name == "installed"):
            return profile
    return None


def _per_engine(plugins: list[str], test) -> dict[str, object]:
    """``test(request, plugin, fixture)`` as one test function per engine profile, parametrized by the plugins that
    profile serves, and naming the profile's fixture (conftest orders and marks tests by the fixtures they use)."""
    groups: dict[str, list[str]] = {}
    for plugin in plugins:
        profile = _offline_profile(plugin)
        if profile is not None:
            groups.setdefault(profile.fixture, []).append(plugin)
    out = {}
    for fixture, members in groups.items():
        def bound(request, plugin, _fixture=fixture):
            test(request, plugin, _fixture)
        bound = pytest.mark.usefixtures(fixture)(pytest.mark.parametrize("plugin", members)(bound))
        out[f"test_{test.__name__}_{fixture.removesuffix('_engine')}"] = bound
    return out


# -- HTTP ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", LOGITS)
def test_http_logits_plugin(all_logits_server, plugin):
    log = REPORT.log("http", plugin)
    fuzz(plugin_cases(SPECS[plugin]), HTTP_CASES, lambda cases: run_batch(all_logits_server, cases, log))
    log.assert_clean(HTTP_CASES)


def proposer_server(plugin: str) -> ServerProfile:
    """A ``declab serve`` running ``plugin``'s proposer with the ``speculative_config`` of its ``declab list``
    entry (its engine-wide settings at their defaults)."""
    config = SPECS[plugin].proposer.speculative_config()
    return ServerProfile(f"fuzz_{plugin}", plugin, args=("--speculative-config", json.dumps(config)))


@pytest.mark.skipif("DECLAB_FUZZ_CASES" not in os.environ,
                    reason="a server of its own per proposer (about 30 s to start and stop each): sized runs only "
                           "(make fuzz); make test fuzzes the proposers offline")
@pytest.mark.usefixtures("no_shared_engine")  # with the tests that start servers of their own, last
@pytest.mark.parametrize("plugin", PROPOSERS)
def test_http_proposer_server(engine_pool, plugin):
    """Each proposer's cases go to a server running that proposer."""
    server = engine_pool.server(proposer_server(plugin))
    log = REPORT.log("http", plugin)
    fuzz(plugin_cases(SPECS[plugin]), HTTP_CASES, lambda cases: run_batch(server, cases, log))
    log.assert_clean(HTTP_CASES)


@pytest.mark.parametrize("plugin", SEARCHES)
def test_http_search_loop(all_logits_server, plugin):
    """A search loop's HTTP client: bad options are a ValueError naming them, the server never answers >= 500."""
    log = REPORT.log("http-search", plugin)
    search = load_object(SPECS[plugin].search.http)

    def run(cases: list[Case]) -> None:
        for case in cases:
            log.record(case, _call(lambda c=case: search(all_logits_server, MODEL, c.prompt, **c.declab)))
        log.batches += 1

    fuzz(search_cases(SPECS[plugin]), HTTP_CASES, run)
    log.assert_clean(HTTP_CASES)


def _call(fn) -> Outcome:
    try:
        fn()
    except ValueError as e:
        return Outcome(400, str(e), error=type(e).__name__)
    except Exception as e:  # noqa: BLE001 - anything else is the failure the suite reports
        return Outcome(500, str(e)[:500], error=type(e).__name__, is_value_error=False)
    return Outcome(200)


# -- offline --------------------------------------------------------------------------------------------------------


def offline_batch(llm, items: list[tuple], chat_template: str) -> tuple[list[tuple], bool]:
    """Each item ``(sampling kwargs, extra_args, prompt, chat)`` through ``llm`` (one generate each): ``("ok",
    token ids)`` or ``(exception type, is a ValueError / vLLM client error, message)``; then whether a plain request
    still generates."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import StructuredOutputsParams

    results = []
    for sampling, extra_args, prompt, chat in items:
        try:
            kwargs = dict(sampling)
            if kwargs.get("structured_outputs") is not None:
                kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
            params = SamplingParams(**kwargs, extra_args=extra_args)
            if chat:
                outs = llm.chat([{"role": "user", "content": prompt}], params, use_tqdm=False,
                                chat_template=chat_template)
            else:
                outs = llm.generate([prompt], params, use_tqdm=False)
            results.append(("ok", [list(o.token_ids) for o in outs[0].outputs]))
        except Exception as e:  # noqa: BLE001 - judged by the test
            results.append((type(e).__name__, isinstance(e, (ValueError, VLLMClientError)), str(e)[:600]))
    plain = llm.generate(["def f():"], SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)
    return results, len(plain[0].outputs[0].token_ids) == 2


def offline_item(case: Case) -> tuple:
    """The case as ``LLM`` arguments: HTTP-only options dropped, ``response_format`` as structured outputs."""
    sampling = {k: v for k, v in case.sampling.items() if k not in ("stream", "response_format")}
    fmt = case.sampling.get("response_format") or {}
    if fmt.get("type") == "json_object":
        sampling["structured_outputs"] = {"json_object": True}
    elif fmt.get("type") == "json_schema":
        sampling["structured_outputs"] = {"json": fmt["json_schema"]["schema"]}
    extra_args = {case.declab_key: dict(case.declab)} if case.declab else None
    return sampling, extra_args, case.prompt, case.endpoint == "chat"


def _offline_outcome(case: Case, result: tuple) -> Outcome:
    if result[0] == "ok":
        ids = result[1]
        counts = None if "stop" in case.sampling or "stop" in case.declab else [len(i) for i in ids]
        return Outcome(200, token_ids=ids, completion_tokens=counts)
    name, is_value_error, message = result
    return Outcome(400 if is_value_error else 500, message, error=name, is_value_error=is_value_error)


def _offline_run(handle, log: FuzzLog):
    chat_template = CHAT_TEMPLATE.read_text()

    def run(cases: list[Case]) -> None:
        cases = log.sendable(cases)
        results, alive = handle.run(offline_batch, [offline_item(c) for c in cases], chat_template)
        for case, result in zip(cases, results):
            log.record(case, _offline_outcome(case, result))
        log.batches += 1
        assert alive, "the engine no longer generates after a batch"

    return run


def offline_plugin(request, plugin, fixture):
    log = REPORT.log("offline", plugin)
    fuzz(plugin_cases(SPECS[plugin]), OFFLINE_CASES, _offline_run(request.getfixturevalue(fixture), log), batch=8)
    log.assert_clean(OFFLINE_CASES)


globals().update(_per_engine(LOGITS + PROPOSERS, offline_plugin))


def offline_search(llm, path: str, items: list[tuple]) -> tuple[list[tuple], bool]:
    """A search loop's offline entry ``path`` on each ``(prompt, options)``: ``("ok",)`` or the exception."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMClientError

    from declab.integrations.sdk.spec import load_object

    search, results = load_object(path), []
    for prompt, options in items:
        try:
            search(llm, [prompt], **options)
            results.append(("ok", []))
        except Exception as e:  # noqa: BLE001 - judged by the test
            results.append((type(e).__name__, isinstance(e, (ValueError, VLLMClientError)), str(e)[:600]))
    plain = llm.generate(["def f():"], SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)
    return results, len(plain[0].outputs[0].token_ids) == 2


def offline_search_loop(request, plugin, fixture):
    log = REPORT.log("offline-search", plugin)
    handle, path = request.getfixturevalue(fixture), SPECS[plugin].search.offline

    def run(cases: list[Case]) -> None:
        results, alive = handle.run(offline_search, path, [(c.prompt, c.declab) for c in cases])
        for case, result in zip(cases, results):
            log.record(case, Outcome(200) if result[0] == "ok" else _offline_outcome(case, result))
        log.batches += 1
        assert alive, "the engine no longer generates after a batch"

    fuzz(search_cases(SPECS[plugin]), OFFLINE_CASES, run, batch=8)
    log.assert_clean(OFFLINE_CASES)


globals().update(_per_engine(SEARCHES, offline_search_loop))


# -- engine-wide settings (no engine: the start-up check every engine runs) -------------------------------------------


@pytest.mark.core
@pytest.mark.parametrize("plugin", WITH_SETTINGS)
def test_engine_settings(plugin):
    """``additional_config.declab.<plugin>`` as the start-up check sees it: refused settings are a ValueError
    naming them, accepted ones pass."""
    log = REPORT.log("settings", plugin)

    def run(cases: list[Case]) -> None:
        for case in cases:
            config = {"declab": {plugin: case.declab}}
            log.record(case, _call(lambda: check_engine_config_section(config, (plugin,))))
        log.batches += 1

    fuzz(settings_cases(SPECS[plugin]), SETTINGS_CASES, run, batch=50)
    log.assert_clean(SETTINGS_CASES)
