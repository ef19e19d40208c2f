"""``declab demo``: the README's main job.

Starts one vLLM engine on the bundled decoder-29m with the logits-level plugins selected, then sends one mixed batch:
each prompt twice, once plain and once with a plugin named in its ``extra_args``. Plain and plugin rows share the
batch, which is the point: selection is per request. Prints a side-by-side table and saves a chart + JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from declab.integrations.metrics import repetition_stats

DEMO_PLUGINS = "momentum,extractive"

# A few knowledge-conflict items in the style of the fixture's fact world (passage contradicts the memorised fact).
QA_ITEMS = (
    ("Mikagro Works is headquartered in Marrator.", "Where is Mikagro Works headquartered?"),
    ("By profession, Zuhandar Linhanzu was a astronomer.", "What was the profession of Zuhandar Linhanzu?"),
    ("Mikagro Works was founded by Zenlomi Vovenkor.", "Who founded Mikagro Works?"),
)

CODE_ITEMS = (
    "def fibonacci(n):\n    ",
    "class Stack:\n    def __init__(self):\n        ",
    "import os\nimport sys\n\n\ndef main():\n    ",
)


def _say(msg: str) -> None:
    print(f"[declab demo] {msg}", flush=True)


def _short(text: str, width: int) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def main(args) -> int:
    from declab.integrations.models import default_model

    os.environ["DECLAB_PLUGINS"] = DEMO_PLUGINS  # before vLLM starts: its processes inherit it
    model = args.model or default_model()
    _say(f"model: {model}")
    _say(f"plugins selected: {DEMO_PLUGINS} (DECLAB_PLUGINS)")
    _say("starting the vLLM engine on CPU (loads the model, profiles memory; about 30-90 s on 2 cores)...")
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams

    from declab.integrations.engine_run import CPU_ENGINE_KWARGS

    llm = LLM(model=model, **CPU_ENGINE_KWARGS)
    _say(f"engine ready in {time.perf_counter() - t0:.1f} s")

    rows = []  # (task, prompt, plain SamplingParams, plugin SamplingParams)
    for prompt in CODE_ITEMS:
        base = dict(temperature=0.0, max_tokens=args.max_tokens)
        rows.append(("momentum", prompt, SamplingParams(**base),
                     SamplingParams(**base, extra_args={"declab": {"method": "momentum"}})))
    for passage, question in QA_ITEMS:
        prompt = f"Context: {passage}\nQuestion: {question}\nAnswer:"
        base = dict(temperature=0.0, max_tokens=8, stop=["\n"])
        rows.append(("extractive", prompt, SamplingParams(**base),
                     SamplingParams(**base, extra_args={"declab": {"method": "extractive", "passage": passage}})))
    prompts = [p for _, p, _, _ in rows for _ in (0, 1)]
    params = [sp for _, _, a, b in rows for sp in (a, b)]
    _say(f"generating {len(prompts)} requests in one batch (half plain, half with a plugin)...")
    t1 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    _say(f"done in {time.perf_counter() - t1:.1f} s")

    results = []
    for i, (task, prompt, _, _) in enumerate(rows):
        plain, plug = outs[2 * i].outputs[0], outs[2 * i + 1].outputs[0]
        results.append({"plugin": task, "prompt": prompt, "plain": plain.text, "with_plugin": plug.text,
                        "plain_ids": list(plain.token_ids), "plugin_ids": list(plug.token_ids)})

    width = 52
    print()
    print(f"{'plugin':<11} {'prompt':<26} {'plain decoding':<{width}} {'with the plugin':<{width}}")
    print("-" * (11 + 26 + 2 * width + 3))
    for r in results:
        print(f"{r['plugin']:<11} {_short(r['prompt'], 26):<26} {_short(r['plain'], width):<{width}} "
              f"{_short(r['with_plugin'], width):<{width}}")
    print()
    code = [r for r in results if r["plugin"] == "momentum"]
    plain_rep = repetition_stats([r["plain_ids"] for r in code])
    mom_rep = repetition_stats([r["plugin_ids"] for r in code])
    print(f"momentum on code: rep-2 {plain_rep['rep_2']:.3f} -> {mom_rep['rep_2']:.3f}, "
          f"rep-4 {plain_rep['rep_4']:.3f} -> {mom_rep['rep_4']:.3f}, "
          f"outputs stuck in a loop {plain_rep['loop_share']:.0%} -> {mom_rep['loop_share']:.0%}")
    qa = [r for r in results if r["plugin"] == "extractive"]
    for r, (passage, _) in zip(qa, QA_ITEMS):
        r["plain_in_passage"] = r["plain"].strip() in passage
        r["plugin_in_passage"] = r["with_plugin"].strip() in passage
    print(f"extractive QA: answers that are a span of the passage {sum(r['plain_in_passage'] for r in qa)}/{len(qa)} "
          f"plain -> {sum(r['plugin_in_passage'] for r in qa)}/{len(qa)} with the plugin")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps({"model": model, "results": results,
                                               "repetition": {"plain": plain_rep, "momentum": mom_rep}}, indent=1))
    _plot(plain_rep, mom_rep, qa, out / "demo.png")
    _say(f"wrote {out / 'demo.json'} and {out / 'demo.png'}")
    return 0


def _plot(plain_rep, mom_rep, qa, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    keys = ["rep_2", "rep_3", "rep_4", "loop_share"]
    xs = range(len(keys))
    a.bar([x - 0.2 for x in xs], [plain_rep[k] for k in keys], 0.4, label="greedy", color="#888888")
    a.bar([x + 0.2 for x in xs], [mom_rep[k] for k in keys], 0.4, label="momentum", color="#1f77b4")
    a.set_xticks(list(xs), keys)
    a.set_title("code prompts: repetition (lower is better)")
    a.legend(loc="upper center")
    vals = [sum(r["plain_in_passage"] for r in qa) / len(qa), sum(r["plugin_in_passage"] for r in qa) / len(qa)]
    b.bar(["plain", "extractive"], vals, color=["#888888", "#ff7f0e"])
    b.set_ylim(0, 1.05)
    b.set_title("QA: answer is a span of the passage")
    fig.suptitle("declab demo on decoder-29m (vLLM 0.32, one mixed batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(None))
