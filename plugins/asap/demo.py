"""``declab demo`` panel: ASAp vs plain grammar-constrained decoding (GCD) on a small finite grammar.

The grammar is the 3-bit strings of Grammar-Aligned Decoding (``grammar_reference.EXPERIMENTS[0]``). In the engine's
child the exact grammar-conditioned distribution ``P(s | s in G)`` is enumerated with transformers (every
tokenization of every string), then ``SAMPLES`` outputs of ``gcd`` and of ``asap`` are drawn through vLLM at
temperature 1. GCD masks ungrammatical tokens and so samples a distorted distribution; ASAp converges to the exact one.
The panel compares the three distributions string by string; the table gives the total variation distance (and KL)
of each method's samples to the exact distribution.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk.demo import DemoPanel, DemoRow, EngineJob, EngineProfile

SAMPLES = 400  # per method: ASAp's total variation to the exact distribution is about 0.1 by then, GCD's about 0.7
COLORS = {"exact": "black", "gcd": "tab:red", "asap": "tab:green"}


def _experiment() -> tuple[str, str, str]:
    from declab.plugins.asap.grammar_reference import EXPERIMENTS

    return EXPERIMENTS[0]


def run(llm, options: dict[str, Any]) -> dict[str, Any]:
    """In the engine's child: the exact distribution, then ``SAMPLES`` samples of gcd and of asap."""
    from declab.plugins.asap.grammar_reference import (
        ASAP_CHUNK,
        GCD_CHUNK,
        empirical,
        exact_reference,
        sample_strings,
        tokenizer_and_model,
    )

    name, prompt, grammar = _experiment()
    model_path = llm.llm_engine.model_config.model
    tok, model = tokenizer_and_model(model_path)
    ref = exact_reference(model_path, prompt, grammar, tok=tok, model=model)
    del model
    samples = {"gcd": sample_strings(llm, tok, ref["prompt_ids"], grammar, "gcd", SAMPLES, GCD_CHUNK),
               "asap": sample_strings(llm, tok, ref["prompt_ids"], grammar, "asap", SAMPLES, ASAP_CHUNK)}
    return {"grammar_name": name, "prompt": prompt, "grammar": grammar, "exact": ref["target"],
            "gcd_exact": ref["gcd"], "samples": {m: empirical(s) for m, s in samples.items()}, "n": SAMPLES}


def summarize(outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from declab.integrations.sdk.metrics import kl_divergence, total_variation

    r = outputs["samples"]["result"]
    exact = r["exact"]
    distance = {m: {"tv": total_variation(dist, exact), "kl": kl_divergence(dist, exact)}
                for m, dist in r["samples"].items()}
    return {"grammar": r["grammar"], "prompt": r["prompt"], "n": r["n"], "exact": exact,
            "gcd_exact": r["gcd_exact"], "empirical": r["samples"], "distance_to_exact": distance,
            "gcd_exact_distance": {"tv": total_variation(r["gcd_exact"], exact),
                                   "kl": kl_divergence(r["gcd_exact"], exact)}}


def draw(ax, numbers: dict[str, Any]) -> None:
    strings = sorted(numbers["exact"])
    xs = range(len(strings))
    series = (("exact", numbers["exact"], "exact P(s | grammar)"),
              ("gcd", numbers["empirical"]["gcd"], "gcd samples"),
              ("asap", numbers["empirical"]["asap"], "asap samples"))
    width = 0.27
    for j, (key, dist, label) in enumerate(series):
        if key != "exact":
            label += f" (TV {numbers['distance_to_exact'][key]['tv']:.2f})"
        ax.bar([x + (j - 1) * width for x in xs], [dist.get(s, 0.0) for s in strings], width, label=label,
               color=COLORS[key])
    ax.set_xticks(list(xs), [repr(s)[1:-1] for s in strings])
    ax.set_ylim(0, 1.0)
    ax.set_ylabel(f"probability ({numbers['n']} samples per method)")
    ax.set_title(f"ASAp vs GCD: 3-bit strings after {numbers['prompt']!r}", fontsize=10)
    ax.legend(fontsize=8)


def row(numbers: dict[str, Any]) -> DemoRow:
    d = numbers["distance_to_exact"]

    def cell(method: str) -> str:
        return f"{method} {d[method]['tv']:.2f} (KL {d[method]['kl']:.2f})"

    return DemoRow(f"distance of {numbers['n']} samples to the exact grammar-conditioned distribution, TV",
                   cell("gcd"), cell("asap"))


PANEL = DemoPanel(
    name="asap",
    jobs=(EngineJob("samples", EngineProfile(plugins=("asap", "gcd")), f"{__name__}:run"),),
    summarize=summarize,
    draw=draw,
    row=row,
)
