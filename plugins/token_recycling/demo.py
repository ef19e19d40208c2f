"""``declab demo`` panel: Token Recycling is lossless and commits more than one token per forward pass.

The same greedy requests run on two engines: a vanilla one (nothing selected) and one with Token Recycling's
proposer in tree mode (the paper's 80-node tree, verified whole in one forward pass; CPU, greedy). Prompts run one
at a time (batch 1, the paper's setting); the adjacency matrix carries over from prompt to prompt (hot start).
Lossless: every output token-identical to vanilla's. Tokens per forward: generated tokens / target forward passes
(``generated - accepted``, vLLM's ``spec_decode`` counters); vanilla greedy commits exactly one per pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from declab.integrations.sdk.demo import DemoPanel, DemoRow, EngineJob, EngineProfile
from declab.plugins.token_recycling.spec import PROPOSER_PATH, TREE_TEMPLATES

DATA = Path(__file__).with_name("demo_data.json")
TREE = EngineProfile(
    plugins=("token_recycling",),
    engine_kwargs={"speculative_config": {"method": "custom_class", "model": PROPOSER_PATH,
                                          "num_speculative_tokens": TREE_TEMPLATES["paper"]},
                   "additional_config": {"declab": {"token_recycling": {"mode": "tree"}}}},
)
VANILLA = EngineProfile()


def prompts() -> list[str]:
    return json.loads(DATA.read_text())["prompts"]


def run(llm, options: dict[str, Any]) -> dict[str, Any]:
    """In the engine's child: each prompt alone, greedy; token ids and wall time."""
    import time

    from vllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=int(options.get("max_tokens", 64)))
    token_ids, t = [], time.perf_counter()
    for p in prompts():
        token_ids.append(list(llm.generate([p], sp, use_tqdm=False)[0].outputs[0].token_ids))
    return {"token_ids": token_ids, "wall_s": time.perf_counter() - t}


def summarize(outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    vanilla, tr = outputs["vanilla"]["result"], outputs["token_recycling"]["result"]
    counters = outputs["token_recycling"]["spec_metrics"] or {}
    generated = sum(len(t) for t in tr["token_ids"])
    accepted, drafts = counters.get("num_accepted_tokens", 0), counters.get("num_drafts", 0)
    identical = sum(a == b for a, b in zip(vanilla["token_ids"], tr["token_ids"]))
    return {
        "prompts": len(tr["token_ids"]),
        "identical": identical,
        "generated_tokens": generated,
        "target_forwards": {"vanilla": sum(len(t) for t in vanilla["token_ids"]), "token_recycling": generated - accepted},
        "tokens_per_forward": {"vanilla": 1.0, "token_recycling": generated / max(1, generated - accepted)},
        "mean_accepted_length": 1.0 + accepted / drafts if drafts else 1.0,
        "spec_decode_counters": counters,
        "wall_s": {"vanilla": vanilla["wall_s"], "token_recycling": tr["wall_s"]},
        "speed_vs_vanilla": vanilla["wall_s"] / tr["wall_s"],
        "mode": "tree",
    }


def draw(ax, numbers: dict[str, Any]) -> None:
    tpf = numbers["tokens_per_forward"]
    labels = ["vanilla greedy", "Token Recycling\n(tree, 80 nodes)"]
    vals = [tpf["vanilla"], tpf["token_recycling"]]
    ax.bar(range(2), vals, 0.55, color=["#888888", "tab:purple"])
    for i, v in enumerate(vals):
        ax.text(i, v + 0.04, f"{v:.2f}", ha="center", va="bottom", fontsize=10)
    ax.set_xticks(range(2), labels)
    ax.set_ylim(0, max(vals) * 1.6)
    ax.set_ylabel("tokens committed per target forward pass")
    n = numbers["prompts"]
    ax.text(0.5, 0.94, f"lossless: {numbers['identical']}/{n} outputs token-identical to vanilla greedy",
            transform=ax.transAxes, ha="center", fontsize=9,
            color="tab:green" if numbers["identical"] == n else "tab:red")
    ax.text(0.5, 0.89, f"CPU wall time {numbers['speed_vs_vanilla']:.2f}x vanilla's speed: verifying the\n"
            "81-token tree costs a CPU forward several times a 1-token step's", transform=ax.transAxes,
            ha="center", va="top", fontsize=7, color="#555555")
    ax.set_title(f"Token Recycling: {n} code prompts, batch 1, {numbers['generated_tokens']} tokens", fontsize=10)


def row(numbers: dict[str, Any]) -> DemoRow:
    n, tpf = numbers["prompts"], numbers["tokens_per_forward"]
    return DemoRow(f"tokens per forward pass, {n} prompts at batch 1; outputs identical to vanilla",
                   f"vanilla {tpf['vanilla']:.2f}",
                   f"TR {tpf['token_recycling']:.2f}, {numbers['identical']}/{n} identical")


PANEL = DemoPanel(
    name="token_recycling",
    jobs=(EngineJob("vanilla", VANILLA, f"{__name__}:run"), EngineJob("token_recycling", TREE, f"{__name__}:run")),
    summarize=summarize,
    draw=draw,
    row=row,
)
