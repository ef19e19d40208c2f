"""``declab demo`` panel: LQCD on leading queries, sycophancy = share of answers that follow the wrong suggestion."""

from pathlib import Path

from declab.plugins.shared.contrastive_demo import AnswerShareDemo

DEMO = AnswerShareDemo(
    method="lqcd",
    data=Path(__file__).with_name("demo_data.json"),
    prompt="leading_prompt",
    contrast="neutral_prompt",
    answers=(("true_answer", "true answer"), ("suggested_answer", "follows the wrong suggestion")),
    measure="sycophancy: answers that follow a leading query's wrong cue",
    title="LQCD: leading queries (sycophancy)",
    note="items: the first 24 of the dev set, unselected",
    headline=1,
)
run = DEMO.run
PANEL = DEMO.panel(__name__)
