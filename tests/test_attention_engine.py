"""The attention-backend plugins through a real engine: GEAR at full rank and TidalDecode with a budget above the
context are greedy token-identical to vanilla; GEAR's pages really are packed (vLLM's block count follows the page
format); mixed batches with prefix caching, preemption and aborts leave no block behind; bad settings are refused
at start-up naming the setting."""

from __future__ import annotations

import pytest
from engines import EngineProfile, greedy_run
from profiles import attention, long_code_prompts

pytestmark = [pytest.mark.engine, pytest.mark.vanilla("attention_long")]


def packed_state(llm) -> dict:
    from declab.integrations.sdk.attention import _Policy

    cache = llm.llm_engine.vllm_config.cache_config
    policy = _Policy.value
    return {"num_gpu_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
            "cell_bytes": policy.cell_bytes() if hasattr(policy, "cell_bytes") else None}


def run_long(llm) -> dict:
    return {**greedy_run(llm, long_code_prompts(), 48, 1), **packed_state(llm)}


def test_gear_full_rank_is_vanilla_on_packed_pages(vanilla, gear_exact_engine):
    reference = vanilla("attention_long")
    got = gear_exact_engine.run(run_long)
    assert got["token_ids"] == reference["token_ids"]
    assert got["single_token_ids"] == reference["single_token_ids"]
    # 1 GiB of pages (VLLM_CPU_KVCACHE_SPACE=1) of 8 layers x 4 KV heads x block_size cells of cell_bytes each.
    page = 8 * 4 * got["block_size"] * got["cell_bytes"]
    assert got["num_gpu_blocks"] == (1 << 30) // page


def test_tidaldecode_budget_above_the_context_is_vanilla(vanilla, tidal_full_engine):
    reference = vanilla("attention_long")
    got = tidal_full_engine.run(run_long)
    assert got["token_ids"] == reference["token_ids"]
    assert got["single_token_ids"] == reference["single_token_ids"]


def mixed_with_aborts(llm) -> dict:
    """Long and short prompts (repeated: prefix caching) on 24 blocks of 32 tokens: the scheduler preempts;
    half of a second wave is aborted after three steps. Every block must be free at the end."""
    from vllm import SamplingParams

    sched = llm.llm_engine.engine_core.engine_core.scheduler
    pool = sched.kv_cache_manager.block_pool
    start = pool.get_num_free_blocks()
    preemptions = [0]
    original = sched._preempt_request

    def counting(request, *args, **kwargs):
        preemptions[0] += 1
        return original(request, *args, **kwargs)

    sched._preempt_request = counting
    prompts = long_code_prompts() * 3 + ["def f(x):\n    return", "import os\n"] * 4
    try:
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=96, ignore_eos=True), use_tqdm=False)
        engine = llm.llm_engine
        ids = [f"abort-{i}" for i in range(8)]
        for i, rid in enumerate(ids):
            engine.add_request(rid, prompts[i], SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))
        steps = 0
        while engine.has_unfinished_requests():
            engine.step()
            steps += 1
            if steps == 3:
                engine.abort_request(ids[::2])
    finally:
        del sched._preempt_request
    # Again, on prefix-cached packed blocks (outputs may differ from the first run: a cached prefix is read packed
    # where the first prefill attended to it unquantized).
    again = llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=96, ignore_eos=True), use_tqdm=False)
    return {"lengths": [len(o.outputs[0].token_ids) for o in [*outs, *again]], "preemptions": preemptions[0],
            "start": start, "end": pool.get_num_free_blocks(), "requests_left": len(sched.requests)}


def assert_no_block_left(got: dict) -> None:
    assert got["lengths"] == [96] * len(got["lengths"])
    assert got["preemptions"] > 0
    assert got["end"] == got["start"] and got["requests_left"] == 0


def test_gear_mixed_batches_preemption_and_aborts_leave_no_block(gear_preempt_engine):
    assert_no_block_left(gear_preempt_engine.run(mixed_with_aborts))


def test_tidaldecode_mixed_batches_preemption_and_aborts_leave_no_block(tidal_preempt_engine):
    assert_no_block_left(tidal_preempt_engine.run(mixed_with_aborts))


@pytest.mark.usefixtures("no_shared_engine")
@pytest.mark.parametrize("plugin,settings", [("gear", {"bits": 4, "rank": 4}), ("tidaldecode", {"budget": 64})])
def test_declab_serve_runs_the_backend_configured_by_additional_config(tmp_path, plugin, settings):
    """``declab serve --plugins P --additional-config ...``: the backend starts, vLLM reports the KV capacity of its
    page format (GEAR: >= 3x the 65,536 tokens of 1 GiB of float32 pages), a long completion is answered, and a bad
    setting on the command line stops the start-up with a message naming it."""
    import json
    import re

    import requests
    from helpers import declab_server

    log = tmp_path / f"{plugin}.log"
    config = json.dumps({"declab": {plugin: settings}})
    with declab_server(plugin, log, "--additional-config", config, env={"VLLM_CPU_KVCACHE_SPACE": "1"}) as base:
        body = {"model": "decoder-29m", "prompt": long_code_prompts()[0], "max_tokens": 64, "temperature": 0,
                "ignore_eos": True}
        r = requests.post(f"{base}/v1/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 64
    capacity = int(re.search(r"KV cache size: ([\d,]+) tokens", log.read_text()).group(1).replace(",", ""))
    assert capacity >= (3 * 65_536 if plugin == "gear" else 65_536), capacity
    name, value = ("bits", 3) if plugin == "gear" else ("budget", 0)
    bad = json.dumps({"declab": {plugin: {**settings, name: value}}})
    with pytest.raises(AssertionError, match="server exited"):
        with declab_server(plugin, tmp_path / "bad.log", "--additional-config", bad, startup_s=300):
            pass
    assert f"additional_config.declab.{plugin}.{name}" in (tmp_path / "bad.log").read_text()


@pytest.mark.parametrize("plugin,settings,message", [
    ("gear", {"bits": 3}, "additional_config.declab.gear.bits must be one of [2, 4, 8], got 3"),
    ("gear", {"rank": 65}, "additional_config.declab.gear.rank must be <= 64"),
    ("tidaldecode", {"selection_layers": "2,9"}, "additional_config.declab.tidaldecode.selection_layers: the model "
                                                 "has layers 0..7"),
])
def test_bad_settings_are_refused_at_start_up_naming_the_setting(engine_startup_error, plugin, settings, message):
    failure = engine_startup_error(EngineProfile(f"{plugin}_bad_{next(iter(settings))}", plugins=plugin,
                                                 engine_kwargs=attention(plugin, **settings)))
    assert failure is not None
    assert message in failure.log, failure.log[-3000:]


def test_speculative_decoding_is_refused_with_an_attention_plugin(engine_startup_error):
    from profiles import token_recycling

    failure = engine_startup_error(EngineProfile("gear_with_tree_verification", plugins="gear,token_recycling",
                                                 engine_kwargs={"speculative_config": token_recycling(4)}))
    assert failure is not None
    assert "gear (an attention backend) cannot run with speculative decoding" in failure.log, failure.log[-3000:]
