"""``declab demo`` panel: CAD on knowledge conflicts, share of answers that follow the context (plain vs CAD)."""

from pathlib import Path

from declab.plugins.shared.contrastive_demo import AnswerShareDemo

DEMO = AnswerShareDemo(
    method="cad",
    data=Path(__file__).with_name("demo_data.json"),
    prompt="prompt_with_context",
    contrast="prompt_without_context",
    answers=(("context_answer", "follows the context"), ("prior_answer", "follows the memorised prior")),
    measure="answers that follow the context on knowledge conflicts",
    title="CAD: knowledge conflicts (passage vs memory)",
    note="items: 20 that plain greedy answers from memory, 12 from the passage",
    headline=0,
)
run = DEMO.run
PANEL = DEMO.panel(__name__)
