"""Child-process programs for Token Recycling engine tests: ``python tests/token_recycling_child.py NAME [ARG]``."""

from __future__ import annotations

import json
import os
import sys

from declab.integrations.engine_run import CPU_ENGINE_KWARGS
from declab.integrations.models import default_model
from declab.plugins.token_recycling.spec import PROPOSER_PATH


def tr_config(k: int = 6) -> dict:
    return {"method": "custom_class", "model": PROPOSER_PATH, "num_speculative_tokens": k}


def sample_continuations(mode: str) -> dict:
    """Many seeded temperature-1 samples of short continuations; mode: vanilla | tr | vanilla_t07 (control)."""
    from vllm import LLM, SamplingParams

    kwargs = dict(CPU_ENGINE_KWARGS, disable_log_stats=False)
    if mode == "tr":
        kwargs["speculative_config"] = tr_config(4)
    llm = LLM(model=default_model(), **kwargs)
    temperature = 0.7 if mode == "vanilla_t07" else 1.0
    # A prompt whose continuation loops, so the recycled drafts are often right and the verifier is exercised.
    prompt = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    n = 1500
    # No per-request seeds: on the CPU build a seeded request whose prefill is chunked kills the engine
    # ("CPU Generator does not use offset", gpu_model_runner.py rewinds torch.Generator offsets, CUDA-only).
    # The engine-wide seed (CPU_ENGINE_KWARGS) keeps the run reproducible.
    params = [SamplingParams(temperature=temperature, max_tokens=5, ignore_eos=True) for _ in range(n)]
    outs = llm.generate([prompt] * n, params, use_tqdm=False)
    metrics = {m.name: getattr(m, "value", None) for m in llm.get_metrics() if "spec_decode_num" in m.name}
    return {"token_ids": [list(o.outputs[0].token_ids) for o in outs], "metrics": metrics}


def tree_mixed(prompts_path: str) -> dict:
    """Tree mode with a mixed batch: greedy rows (trees), a temperature-1 row and a greedy row asking for logprobs
    (both drafted as chains, verified by vLLM's rejection sampler)."""
    from vllm import LLM, SamplingParams

    from declab.plugins.token_recycling.proposer import STATS_ENV

    prompts = json.load(open(prompts_path))
    llm = LLM(model=default_model(), **CPU_ENGINE_KWARGS, speculative_config=tr_config(80))
    params = [SamplingParams(temperature=0.0, max_tokens=64) for _ in prompts]
    params[1] = SamplingParams(temperature=1.0, max_tokens=64)
    params[2] = SamplingParams(temperature=0.0, max_tokens=64, logprobs=1)
    outs = llm.generate(prompts, params, use_tqdm=False)
    stats = json.load(open(os.environ[STATS_ENV]))
    return {"token_ids": [list(o.outputs[0].token_ids) for o in outs],
            "logprobs_steps": len(outs[2].outputs[0].logprobs or []), "stats": stats}


def start_only(k: str) -> dict:
    """Try to start an engine with TR (for configuration errors); report the error text with its causes.

    The engine core runs in this process: a worker subprocess's traceback can be cut off when the engine shuts
    down under load, while an in-process error arrives with its whole cause chain."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    try:
        LLM(model=default_model(), **CPU_ENGINE_KWARGS, speculative_config=tr_config(int(k)))
    except Exception as e:  # noqa: BLE001 - the message is what the test checks
        chain, cur = [], e
        while cur is not None and len(chain) < 10:
            chain.append(f"{type(cur).__name__}: {cur}")
            cur = cur.__cause__ or cur.__context__
        return {"error": " <- ".join(chain)}
    return {"error": None}


if __name__ == "__main__":
    out = globals()[sys.argv[1]](*sys.argv[2:])
    print("RESULT " + json.dumps(out), flush=True)
