"""vLLM fix ``spec_decode_top_k_cpu`` (with ``cpu_expand_kernel``'s int32 half): a sampled request with ``top_k``
under speculative decoding no longer kills the CPU engine, and its drafts are verified against the top-k target
distribution vLLM intends (found by the fuzz suite, issue #13).

Two failures, in order: the rejection sampler runs on every step, also without draft tokens (every request's first
step), and ``apply_top_k_only`` raises on the empty ``k`` (``k.max()``); once past that, the first step with drafts
expanded top-k to garbage (the int32 output of the CPU expand kernel was never written): ``selected index k out of
range``. Both kill the engine (EngineDeadError). Engine: ``tr_chain`` (Token Recycling, drafts verified by vLLM's
rejection sampler); the core test calls vLLM's original function on the tensors the empty step hands it.
"""

from __future__ import annotations

import pytest
import torch
from engines import spec_counters

from declab.patches.spec_decode_top_k_cpu import SpecDecodeTopKCpuPatch

MAX_TOKENS = 32
PROMPTS = ("def fibonacci(n):\n    ", "class Stack:\n    def __init__(self):\n        ")


def _top_k_only():
    """vLLM's original ``apply_top_k_only`` (also when the patch is applied in this process) and the patched one."""
    from vllm.v1.sample.ops import topk_topp_sampler

    original = vars(topk_topp_sampler).get("_declab_orig_apply_top_k_only", topk_topp_sampler.apply_top_k_only)
    return original, SpecDecodeTopKCpuPatch.replacements(topk_topp_sampler)["apply_top_k_only"]


def test_original_raises_on_a_step_without_drafts_and_the_fix_keeps_the_mask():
    original, patched = _top_k_only()
    # What apply_sampling_constraints passes on a step where no request has a draft token: no rows.
    logits, k = torch.empty(0, 64), torch.empty(0, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="numel\\(\\) == 0"):  # the negative control: vLLM's own function
        original(logits.clone(), k.clone())
    assert patched(logits, k).shape == (0, 64)
    # Rows present: the very same top-k mask (k = 64 = the vocabulary is "no top-k" for that row).
    rows = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    ks = torch.tensor([1, 5, 64], dtype=torch.int32)
    expected = original(rows.clone(), ks.clone())
    assert torch.equal(patched(rows.clone(), ks.clone()), expected)
    assert (expected > -float("inf")).sum(dim=1).tolist() == [1, 5, 64]


def top_k_requests(llm, prompts: tuple[str, ...], max_tokens: int) -> dict:
    """Sampled top-k requests in one batch with greedy and top-k-free sampled rows, then alone, then greedy again.
    No row sets top_p (with one, vLLM takes the sorting path, which has no ``k.max()``). For each run: the token ids
    and the accepted drafts (vLLM's counters) over it."""
    from vllm import SamplingParams
    from vllm.v1.sample.ops import topk_topp_sampler

    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    # top_k=1 at temperature 1: the verifier's target distribution is one-hot on the argmax, so with the top-k mask
    # really applied to the draft tokens the output is the greedy one (a garbage k breaks that, or the engine).
    # Sampled rows ignore EOS: a sampled end of text is legitimate but would make the length checks flaky (CI saw
    # a top_k=5 row stop early).
    top_1 = SamplingParams(temperature=1.0, top_k=1, max_tokens=max_tokens)
    top_5 = SamplingParams(temperature=0.7, top_k=5, max_tokens=max_tokens, logprobs=0, ignore_eos=True)
    free = SamplingParams(temperature=0.8, max_tokens=max_tokens, ignore_eos=True)

    def run(batch: list[tuple[str, SamplingParams]]) -> dict:
        before = spec_counters(llm)
        outs = llm.generate([p for p, _ in batch], [s for _, s in batch], use_tqdm=False)
        return {"token_ids": [list(o.outputs[0].token_ids) for o in outs],
                "finish": [o.outputs[0].finish_reason for o in outs],
                "ranks": [[next(iter(step.values())).rank for step in o.outputs[0].logprobs or []] for o in outs],
                "accepted": spec_counters(llm).get("num_accepted_tokens", 0) - before.get("num_accepted_tokens", 0)}

    a, b = prompts
    return {"patched": dict(getattr(topk_topp_sampler, "_declab_patched", {})),
            "mixed": run([(a, greedy), (a, top_1), (b, top_5), (b, free), (b, greedy), (a, top_5)]),
            "top_1_alone": run([(a, top_1)]),
            "top_5_alone": run([(b, top_5)]),
            "greedy_after": run([(a, greedy), (b, greedy)])}


def test_sampled_top_k_requests_finish_and_the_engine_lives(tr_chain_engine):
    out = tr_chain_engine.run(top_k_requests, PROMPTS, MAX_TOKENS)
    assert out["patched"].get("apply_top_k_only") == "spec_decode_top_k_cpu"  # a VLLM_FIXES entry, applied
    mixed, top_1, top_5, after = out["mixed"], out["top_1_alone"], out["top_5_alone"], out["greedy_after"]
    for name, run in out.items():
        if name != "patched":
            assert all(len(t) == MAX_TOKENS for t in run["token_ids"]), (name, run["finish"])
            assert set(run["finish"]) == {"length"}, (name, run["finish"])
    # The engine still generates, and greedy is what it was before the top-k requests.
    greedy_a, greedy_b = mixed["token_ids"][0], mixed["token_ids"][4]
    assert after["token_ids"] == [greedy_a, greedy_b]
    # Drafts were verified with the top-k mask: top_k=1 is greedy, in the batch and alone, with drafts accepted.
    assert mixed["token_ids"][1] == greedy_a and top_1["token_ids"] == [greedy_a]
    assert top_1["accepted"] > 0 and mixed["accepted"] > 0
    # Every token of a top_k=5 row is among the target's 5 most likely (rank 1 = the most likely).
    top_5_ranks = mixed["ranks"][2] + mixed["ranks"][5] + top_5["ranks"][0]
    assert len(top_5_ranks) == 3 * MAX_TOKENS and max(top_5_ranks) <= 5, top_5_ranks
