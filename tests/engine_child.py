"""Child-process programs for engine tests: ``python tests/engine_child.py NAME`` prints one JSON line.

vLLM reads plugin selection once per process, so each engine configuration runs in a process of its own.
"""

from __future__ import annotations

import json
import sys


def _llm(**overrides):
    from vllm import LLM

    from declab.integrations.engine_run import CPU_ENGINE_KWARGS
    from declab.integrations.models import default_model

    return LLM(model=default_model(), **{**CPU_ENGINE_KWARGS, **overrides})


def router_mixed_batch() -> dict:
    """Mixed batch (plain + momentum + extractive rows) and admission errors, on one engine."""
    from vllm import SamplingParams

    from declab.integrations.prompts import CODE_PROMPTS

    llm = _llm()
    code = list(CODE_PROMPTS[:6])
    passage = "Mikagro Works is headquartered in Marrator."
    qa = f"Context: {passage}\nQuestion: Where is Mikagro Works headquartered?\nAnswer:"
    greedy = dict(temperature=0.0, max_tokens=48)
    prompts, params, kinds = [], [], []
    for p in code:  # interleave plain and plugin rows in one batch
        prompts += [p, p]
        params += [SamplingParams(**greedy), SamplingParams(**greedy, extra_args={"declab": {"method": "momentum"}})]
        kinds += ["plain", "momentum"]
    prompts += [qa, qa]
    params += [SamplingParams(temperature=0.0, max_tokens=8),
               SamplingParams(temperature=0.0, max_tokens=8,
                              extra_args={"declab.method": "extractive", "declab.passage": passage})]
    kinds += ["plain", "extractive"]
    outs = llm.generate(prompts, params, use_tqdm=False)
    result = {"kinds": kinds, "prompts": prompts, "passage": passage,
              "token_ids": [list(o.outputs[0].token_ids) for o in outs],
              "texts": [o.outputs[0].text for o in outs]}
    errors = {}
    bad = {
        "unknown_method": {"declab": {"method": "nope"}},
        "out_of_range": {"declab": {"method": "extractive", "passage": "x", "max_span_tokens": 0}},
        "missing_required": {"declab": {"method": "extractive"}},
        "unknown_param": {"declab": {"method": "extractive", "passage": "x", "bogus": 1}},
        "not_an_object": {"declab": "momentum"},
    }
    for name, extra in bad.items():
        try:
            llm.generate(["hello"], SamplingParams(max_tokens=2, extra_args=extra), use_tqdm=False)
            errors[name] = None
        except Exception as e:  # noqa: BLE001 - vLLM wraps it in VLLMValidationError
            errors[name] = f"{type(e).__name__}: {e}"
    # The engine keeps serving after rejected requests.
    after = llm.generate([code[0]], SamplingParams(**greedy), use_tqdm=False)
    result["errors"] = errors
    result["after_errors_token_ids"] = list(after[0].outputs[0].token_ids)
    return result


def spec_with_logits_plugin() -> dict:
    try:
        _llm(speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3})
    except Exception as e:  # noqa: BLE001 - the message is what the test checks
        return {"error": f"{type(e).__name__}: {e}"}
    return {"error": None}


if __name__ == "__main__":
    out = globals()[sys.argv[1]]()
    print("RESULT " + json.dumps(out), flush=True)
