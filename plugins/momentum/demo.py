"""``declab demo`` panel: momentum decoding vs plain greedy on code prompts where greedy loops (repetition).

Both configurations share one batch of one engine: each prompt once plain, once with ``{"method": "momentum"}``
(default parameters), so the only difference is the request's ``extra_args``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from declab.integrations.sdk.demo import DemoPanel, DemoRow, EngineJob, EngineProfile

DATA = Path(__file__).with_name("demo_data.json")
METRICS = (("rep_2", "rep-2"), ("rep_3", "rep-3"), ("rep_4", "rep-4"), ("loop_share", "ends in a loop"))


def prompts() -> list[str]:
    return json.loads(DATA.read_text())["prompts"]


def run(llm, options: dict[str, Any]) -> dict[str, Any]:
    """In the engine's child: greedy and momentum outputs (token ids and texts) of every prompt, one mixed batch."""
    from vllm import SamplingParams

    ps = prompts()
    base = dict(temperature=0.0, max_tokens=int(options.get("max_tokens", 64)))
    params = [SamplingParams(**base)] * len(ps) + [SamplingParams(**base, extra_args={"declab": {"method": "momentum"}})
                                                   ] * len(ps)
    outs = [o.outputs[0] for o in llm.generate(ps * 2, params, use_tqdm=False)]
    halves = {"greedy": outs[: len(ps)], "momentum": outs[len(ps):]}
    return {config: {"token_ids": [list(o.token_ids) for o in rows], "texts": [o.text for o in rows]}
            for config, rows in halves.items()}


def summarize(outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from declab.integrations.sdk.metrics import repetition_stats

    result = outputs["batch"]["result"]
    ps = prompts()
    return {
        "prompts": len(ps),
        "max_tokens": max(len(t) for t in result["greedy"]["token_ids"]),
        "greedy": repetition_stats(result["greedy"]["token_ids"]),
        "momentum": repetition_stats(result["momentum"]["token_ids"]),
        "examples": [{"prompt": p, "greedy": g, "momentum": m}
                     for p, g, m in zip(ps, result["greedy"]["texts"], result["momentum"]["texts"])],
    }


def draw(ax, numbers: dict[str, Any]) -> None:
    xs = range(len(METRICS))
    for offset, config, color in ((-0.2, "greedy", "#888888"), (0.2, "momentum", "tab:blue")):
        vals = [numbers[config][k] for k, _ in METRICS]
        ax.bar([x + offset for x in xs], vals, 0.4, label=config, color=color)
        for x, v in zip(xs, vals):
            ax.text(x + offset, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [label for _, label in METRICS])
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("mean over prompts (lower is better)")
    ax.set_title(f"Momentum: repetition, {numbers['prompts']} code prompts x {numbers['max_tokens']} tokens",
                 fontsize=10)
    ax.legend(fontsize=8)


def row(numbers: dict[str, Any]) -> DemoRow:
    n = numbers["prompts"]

    def cell(config: str) -> str:
        s = numbers[config]
        return f"{config} {s['rep_4']:.2f} ({round(s['loop_share'] * n)}/{n} loop)"

    return DemoRow(f"rep-4 (share of repeated 4-grams) on {n} code prompts where greedy loops", cell("greedy"),
                   cell("momentum"))


PANEL = DemoPanel(
    name="momentum",
    jobs=(EngineJob("batch", EngineProfile(plugins=("momentum",)), f"{__name__}:run"),),
    summarize=summarize,
    draw=draw,
    row=row,
)
