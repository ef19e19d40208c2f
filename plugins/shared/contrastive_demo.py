"""Demo panel shared by the contrastive plugins on the fact-world sets (``declab demo``): plain vs the method.

CAD and LQCD ask the same thing of their items: greedy short answers to the main prompt, once plain and once
contrasted with a second prompt, and the share of answers equal to each of two reference answers (the context's
and the memorised one; the suggested and the true one). :class:`AnswerShareDemo` holds that once; each plugin's
``demo.py`` declares which fields of its ``demo_data.json`` play which role. Plain data and lazy imports: the
harness imports this without vLLM or torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from declab.integrations.sdk.demo import DemoPanel, DemoRow, EngineJob, EngineProfile

ANSWER_TOKENS = 12  # answers are one or two names; the first line is compared
COLORS = ("tab:green", "tab:red", "#cccccc")


@dataclass(frozen=True)
class AnswerShareDemo:
    """Plain greedy vs ``method`` on the items of ``data`` (``demo_data.json``: ``{"items": [...], ...}``).

    ``prompt`` / ``contrast`` are the item fields of the main prompt and of ``contrast_prompt``; ``answers`` the two
    reference-answer fields with their legend labels, the wanted answer first (drawn green), the unwanted one second
    (red); ``headline`` picks the one the table row reports.
    """

    method: str
    data: Path
    prompt: str
    contrast: str
    answers: tuple[tuple[str, str], tuple[str, str]]
    measure: str
    title: str
    note: str = ""  # how the items were chosen, under the panel's title
    alpha: float = 0.5
    headline: int = 0  # index into ``answers`` of the table's number

    def items(self) -> list[dict[str, Any]]:
        return json.loads(self.data.read_text())["items"]

    def run(self, llm, options: dict[str, Any]) -> dict[str, Any]:
        """In the engine's child: one batch, every item plain and with the method; the answers' texts."""
        from vllm import SamplingParams

        items = self.items()
        plain = SamplingParams(temperature=0.0, max_tokens=ANSWER_TOKENS)
        contrasted = [SamplingParams(temperature=0.0, max_tokens=ANSWER_TOKENS, extra_args={"declab": {
            "method": self.method, "alpha": self.alpha, "contrast_prompt": it[self.contrast]}}) for it in items]
        prompts = [it[self.prompt] for it in items]
        outs = llm.generate(prompts * 2, [plain] * len(items) + contrasted, use_tqdm=False)
        texts = [o.outputs[0].text for o in outs]
        return {"plain": texts[: len(items)], self.method: texts[len(items):]}

    def summarize(self, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        from declab.integrations.sdk.metrics import answer_rates, first_line_answer

        result, items = outputs["answers"]["result"], self.items()
        fields = [f for f, _ in self.answers]
        shares = {}
        for config in ("plain", self.method):
            rates = answer_rates(result[config], items, fields)
            rates["other"] = max(0.0, 1.0 - sum(rates.values()))
            shares[config] = rates
        return {"items": len(items), "alpha": self.alpha, "shares": shares,
                "answers": {c: [first_line_answer(t) for t in result[c]] for c in ("plain", self.method)},
                "expected": {f: [it[f] for it in items] for f in fields}}

    def draw(self, ax, numbers: dict[str, Any]) -> None:
        configs = ("plain", self.method)
        labels = [lab for _, lab in self.answers] + ["other answer"]
        keys = [f for f, _ in self.answers] + ["other"]
        bottoms = [0.0, 0.0]
        for key, label, color in zip(keys, labels, COLORS):
            vals = [numbers["shares"][c][key] for c in configs]
            ax.bar(range(2), vals, 0.55, bottom=bottoms, label=label, color=color)
            for i, v in enumerate(vals):
                if v >= 0.06:
                    ax.text(i, bottoms[i] + v / 2, f"{v:.0%}", ha="center", va="center", fontsize=9)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
        ax.set_xticks(range(2), ["plain greedy", f"{self.method} (alpha {numbers['alpha']})"])
        ax.set_ylim(0, 1.0)
        ax.set_ylabel(f"share of {numbers['items']} answers")
        ax.set_title(f"{self.title}\n{self.note}" if self.note else self.title, fontsize=10)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)

    def row(self, numbers: dict[str, Any]) -> DemoRow:
        key = self.answers[self.headline][0]
        plain, method = (numbers["shares"][c][key] for c in ("plain", self.method))
        n = numbers["items"]
        return DemoRow(f"{self.measure} ({n} items)", f"plain {plain:.0%} ({round(plain * n)}/{n})",
                       f"{self.method} {method:.0%} ({round(method * n)}/{n})")

    def panel(self, module: str) -> DemoPanel:
        """The panel; ``module`` is the plugin's demo module, whose ``run`` the engine's child calls."""
        job = EngineJob("answers", EngineProfile(plugins=(self.method,)), f"{module}:run")
        return DemoPanel(name=self.method, jobs=(job,), summarize=self.summarize, draw=self.draw, row=self.row)
