"""vLLM's own ``draft_model`` at temperature 1 on the CPU build, with and without declab's fixes of vLLM.

Why this exists: vLLM 0.32's CPU fallback of the rejection sampler's ``expand_kernel`` leaves the per-draft-token
temperature and top-p uninitialised (``patches/cpu_expand_kernel.py``), so every sampled request under vLLM's own
speculative methods is verified against garbage. ``declab bench spec`` therefore runs vLLM's methods with
``DECLAB_VLLM_FIXES=1`` (the fixes alone, no plugin) and, when sampling, ``draft_sample_method="probabilistic"``. This
script measures what that changes: drafts accepted by vLLM's ``draft_model`` at temperature 1, with the target as its
own draft (where every draft should be accepted) and with draft-5m, each with the fixes off and on.

    python measurements/draft_model_sampling_probe.py --out measurements/draft-model-sampling.json

Each configuration runs in a child process (one engine each, in-process engine core), 16 prompts x 64 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PROMPTS = ["def fibonacci(n):", "The history of the Roman empire", "import numpy as np\n", "Once upon a time"] * 4


def child(draft: str, method: str) -> dict:
    from vllm import LLM, SamplingParams

    from declab.integrations.engine_run import CPU_ENGINE_KWARGS
    from declab.integrations.models import default_model

    llm = LLM(default_model(), **{**CPU_ENGINE_KWARGS, "disable_log_stats": False},
              speculative_config={"method": "draft_model", "model": draft, "num_speculative_tokens": 4,
                                  "draft_sample_method": method})
    t = time.perf_counter()
    llm.generate(PROMPTS, SamplingParams(temperature=1.0, max_tokens=64, ignore_eos=True), use_tqdm=False)
    seconds = time.perf_counter() - t
    m = {x.name.removeprefix("vllm:spec_decode_"): x.value for x in llm.get_metrics()
         if x.name.startswith("vllm:spec_decode") and hasattr(x, "value")}
    return {"seconds": seconds, "num_drafts": m["num_drafts"], "num_draft_tokens": m["num_draft_tokens"],
            "num_accepted_tokens": m["num_accepted_tokens"],
            "acceptance_rate": m["num_accepted_tokens"] / max(m["num_draft_tokens"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--child", nargs=2, metavar=("DRAFT", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)))
        return
    from declab.integrations.engine_run import IN_PROCESS_ENGINE_ENV
    from declab.integrations.models import default_draft_model, default_model
    from declab.integrations.sdk.bench import provenance

    rows = []
    for draft_name, draft in (("target as its own draft", default_model()), ("draft-5m", default_draft_model())):
        for method in ("greedy", "probabilistic"):
            for fixes in ("0", "1"):
                env = {**os.environ, **IN_PROCESS_ENGINE_ENV, "DECLAB_VLLM_FIXES": fixes}
                env.pop("DECLAB_PLUGINS", None)
                out = subprocess.run([sys.executable, __file__, "--out", args.out, "--child", draft, method],
                                     env=env, capture_output=True, text=True, check=True).stdout
                res = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
                rows.append({"draft": draft_name, "draft_sample_method": method, "declab_vllm_fixes": fixes == "1",
                             **res})
                print(rows[-1])
    report = {"benchmark": "vLLM draft_model at temperature 1, K=4, 16 prompts x 64 tokens", "rows": rows,
              "provenance": provenance()}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
