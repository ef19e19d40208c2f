"""Seeded requests under chunked prefill on vLLM's CPU build (patch ``seeded_chunked_prefill_cpu``).

Unpatched vLLM 0.32 kills the engine on CPU as soon as a request with its own ``seed`` has a partial-prefill step
(``RuntimeError: CPU Generator does not use offset``). With any declab plugin selected the patch is applied; the
engine test checks that such a request completes, that its tokens do not depend on how its prefill was split, and
that the engine still serves a plain request afterwards.

The engine is the ``seeded_chunked`` profile of ``profiles.py`` (``momentum`` selected, chunked prefill with a
budget of ``TOKEN_BUDGET`` tokens per step, no prefix caching).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from profiles import SEEDED_CHUNKED_BUDGET

from declab.patches.seeded_chunked_prefill_cpu import SeededChunkedPrefillCpuPatch

TOKEN_BUDGET = SEEDED_CHUNKED_BUDGET  # max_num_batched_tokens: PROMPT_LEN fits a step alone, not next to a filler
PROMPT_LEN = 100
MAX_TOKENS = 16
SEED = 1234


class RunnerStandIn:
    """What ``GPUModelRunner._sample`` and ``._bookkeeping_sync`` do with per-request generators, nothing else: the
    CPU sampler draws once per seeded row (``forward_cpu``), bookkeeping rewinds discarded rows with the CUDA-only
    offset API (the loop at the top of vLLM 0.32's ``_bookkeeping_sync``)."""

    def __init__(self, seeds: dict[int, int], discard: list[bool]):
        generators = {row: torch.Generator().manual_seed(seed) for row, seed in seeds.items()}
        self.input_batch = SimpleNamespace(num_reqs=len(discard), generators=generators)
        self.discard_request_mask = SimpleNamespace(np=np.array(discard))

    def _sample(self) -> dict[int, int]:
        return {row: int(torch.randint(0, 2**31, (1,), generator=gen))
                for row, gen in self.input_batch.generators.items()}

    def _bookkeeping_sync(self) -> list[int]:
        for i in np.nonzero(self.discard_request_mask.np[: self.input_batch.num_reqs])[0]:
            gen = self.input_batch.generators.get(int(i))
            if gen is not None:
                gen.set_offset(gen.get_offset() - 4)
        return list(self.input_batch.generators)


def _step(runner: RunnerStandIn, discard: list[bool]) -> dict[int, int]:
    runner.discard_request_mask.np = np.array(discard)
    drawn = runner._sample()
    runner._bookkeeping_sync()
    return drawn


def _first_draw(seed: int) -> int:
    return int(torch.randint(0, 2**31, (1,), generator=torch.Generator().manual_seed(seed)))


def test_unpatched_rewind_fails_on_a_cpu_generator():
    with pytest.raises(RuntimeError, match="CPU Generator does not use offset"):
        _step(RunnerStandIn({0: SEED}, [True]), [True])


def test_patched_partial_prefill_step_draws_nothing_from_the_request_generator(monkeypatch):
    from declab.patches import runner_sample

    listeners = []  # what the patch subscribes to the runner-sample seam (not applied to vLLM here)
    monkeypatch.setattr(runner_sample, "subscribe", listeners.append)
    replaced = SeededChunkedPrefillCpuPatch.replacements(RunnerStandIn)
    (listener,) = listeners

    def _sample(self):
        with listener(self, None, None):
            return RunnerStandIn._sample(self)

    patched = type("Patched", (RunnerStandIn,), {**replaced, "_sample": _sample})
    runner = patched({0: SEED, 1: 7}, [True, False])
    order = list(runner.input_batch.generators)
    _step(runner, [True, False])  # row 0: partial prefill, its token is discarded
    assert list(runner.input_batch.generators) == order  # the hidden generator is back, same order
    after = _step(runner, [False, False])  # row 0 samples for real
    assert after[0] == _first_draw(SEED)  # as if the partial step had not happened
    assert after[1] != _first_draw(7)  # rows that sampled for real keep advancing


# --- engine test: a scenario on the seeded_chunked engine (profiles.py), the test asserts on its result -----------


def seeded_under_chunked_prefill(llm) -> dict:
    """One seeded request alone (one prefill step) and behind one or two fillers (chunked prefill), plain greedy
    requests before and after."""
    from vllm import SamplingParams
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner  # the host's class, patched there

    tokenizer = llm.get_tokenizer()

    def prompt(text: str) -> dict:
        ids = tokenizer(text * 50).input_ids[:PROMPT_LEN]
        assert len(ids) == PROMPT_LEN
        return {"prompt_token_ids": ids}

    seeded, fillers = prompt("def fibonacci(n):\n    "), [prompt("The quick brown fox. "), prompt("import os\n")]
    sampled = SamplingParams(temperature=1.0, seed=SEED, max_tokens=MAX_TOKENS, ignore_eos=True)
    unseeded = SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)

    def tokens(prompts, params) -> list[list[int]]:
        return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]

    plain_before = tokens([fillers[0]], greedy)[0]
    # FCFS with chunked prefill: fillers are scheduled first and the seeded prompt gets the rest of the budget.
    seeded_tokens = {
        "unchunked": tokens([seeded], sampled)[0],  # 100 prompt tokens in one step
        "after_one_filler": tokens([fillers[0], seeded], [unseeded, sampled])[1],  # 28 + 72
        "after_two_fillers": tokens([*fillers, seeded], [unseeded, unseeded, sampled])[2],  # 56 + 44
    }
    return {"patched": sorted(getattr(GPUModelRunner, "_declab_patched", {})),
            "seeded": seeded_tokens, "plain_before": plain_before, "plain_after": tokens([fillers[0]], greedy)[0]}


@pytest.mark.engine
def test_seeded_request_survives_chunked_prefill_with_the_same_tokens(seeded_chunked_engine):
    assert PROMPT_LEN <= TOKEN_BUDGET < 2 * PROMPT_LEN  # alone: one prefill step; behind a filler: chunked
    out = seeded_chunked_engine.run(seeded_under_chunked_prefill)
    assert {"_sample", "_bookkeeping_sync"} <= set(out["patched"])
    reference = out["seeded"]["unchunked"]
    assert len(reference) == MAX_TOKENS
    assert out["seeded"] == {split: reference for split in out["seeded"]}
    assert out["plain_after"] == out["plain_before"]  # the engine still serves, unchanged
