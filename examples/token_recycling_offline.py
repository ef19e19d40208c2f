"""Token Recycling with the offline ``vllm.LLM`` class: chain mode (any backend) or the paper's whole tree (CPU).

    python examples/token_recycling_offline.py            # chain, K = 6
    python examples/token_recycling_offline.py --tree     # the 80-node tree, verified whole (greedy requests)

The plugin is selected through ``DECLAB_PLUGINS`` (set before vLLM starts) and its engine-wide settings through vLLM's
``additional_config={"declab": {"token_recycling": {...}}}``. The output is token-identical to plain greedy decoding; the engine's speculative
counters show how many drafted tokens were accepted.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="store_true", help="verify the paper's whole tree (CPU backend)")
    parser.add_argument("--model", default=None, help="model path (default: the bundled decoder-29m)")
    args = parser.parse_args()

    os.environ["DECLAB_PLUGINS"] = "token_recycling"
    settings = {"mode": "tree"} if args.tree else {}

    from vllm import LLM, SamplingParams

    from declab.integrations.engine_run import CPU_ENGINE_KWARGS
    from declab.integrations.models import default_model

    llm = LLM(model=args.model or default_model(), **CPU_ENGINE_KWARGS, disable_log_stats=False,
              additional_config={"declab": {"token_recycling": settings}},
              speculative_config={"method": "custom_class",
                                  "model": "declab.plugins.token_recycling.TokenRecyclingProposer",
                                  "num_speculative_tokens": 80 if args.tree else 6})
    prompts = ["def fibonacci(n):\n", "The capital of France is"]
    for out in llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=48)):
        print(repr(out.prompt), "->", repr(out.outputs[0].text))
    counters = {m.name: m.value for m in llm.get_metrics()
                if m.name in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_accepted_tokens")}
    drafts, accepted = counters.get("vllm:spec_decode_num_drafts", 0), counters.get(
        "vllm:spec_decode_num_accepted_tokens", 0)
    if drafts:
        print(f"mean accepted length (1 + accepted / drafts): {1 + accepted / drafts:.2f}")


if __name__ == "__main__":
    main()
