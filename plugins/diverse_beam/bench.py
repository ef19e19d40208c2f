"""``declab bench diverse-beam``: vLLM's ``LLM.beam_search`` and this plugin's search loop (several groups and
penalties) on the same engine and prompts: distinct-n of the returned beams, distinct first tokens, the best and
the mean cumulative log-probability, and whether ``G=1, λ=0`` returns exactly vLLM's beams.

One engine (no plugin selected: the search loop runs in the caller's process), in a child process of its own
(``call_in_child``). ``tests/test_diverse_beam_engine.py`` runs the same ``beam_searches`` on its shared engine.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from declab.integrations.sdk.bench import CODE_PROMPTS, CPU_ENGINE_KWARGS, call_in_child, default_model

MEASURE_TARGET = "declab.plugins.diverse_beam.bench:measure"  # the child's side
CONFIGS = ((1, 0.0), (4, 1.0), (2, 0.5), (4, 0.5))  # (num_groups, diversity_penalty)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--prompts", type=int, default=4, help="first N code prompts")
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    return parser


def beam_searches(llm, n_prompts: int = 4, beam_width: int = 4, max_tokens: int = 16) -> dict:
    """vLLM's ``LLM.beam_search`` and our search loop (several groups / penalties) on the same prompts."""
    from vllm.sampling_params import BeamSearchParams

    from declab.plugins.diverse_beam.core import distinct_n
    from declab.plugins.diverse_beam.search import diverse_beam_search

    prompts = list(CODE_PROMPTS[:n_prompts])
    out: dict = {"prompts": prompts, "beam_width": beam_width, "max_tokens": max_tokens}
    tokenizer = llm.get_tokenizer()
    prompt_ids = [list(tokenizer.encode(p)) for p in prompts]
    llm.generate(prompts[:1], use_tqdm=False)  # warm-up

    t = time.perf_counter()
    ref = llm.beam_search([{"prompt": p} for p in prompts],
                          BeamSearchParams(beam_width=beam_width, max_tokens=max_tokens))
    out["vllm_s"] = time.perf_counter() - t
    out["vllm_prompt_prefix_ok"] = [list(s.tokens[: len(ids)]) == ids for o, ids in zip(ref, prompt_ids, strict=True)
                                    for s in o.sequences]
    out["vllm"] = [[{"token_ids": list(s.tokens[len(ids):]), "cum_logprob": s.cum_logprob} for s in o.sequences]
                   for o, ids in zip(ref, prompt_ids, strict=True)]

    def run(num_groups: int, penalty: float) -> dict:
        t = time.perf_counter()
        res = diverse_beam_search(llm, prompts, beam_width=beam_width, num_groups=num_groups,
                                  diversity_penalty=penalty, max_tokens=max_tokens)
        return {"seconds": time.perf_counter() - t, "beams": [[b.as_dict() for b in beams] for beams in res]}

    out["dbs"] = {f"G{groups}_lambda{penalty}": run(groups, penalty) for groups, penalty in CONFIGS}

    def summary(per_prompt: list[list[dict]]) -> dict:
        k = len(per_prompt)
        return {
            **{f"distinct_{n}": sum(distinct_n([b["token_ids"] for b in beams], n) for beams in per_prompt) / k
               for n in (1, 2, 3)},
            "distinct_first_tokens": sum(len({b["token_ids"][0] for b in beams}) for beams in per_prompt) / k,
            "best_cum_logprob": sum(beams[0]["cum_logprob"] for beams in per_prompt) / k,
            "mean_cum_logprob": sum(sum(b["cum_logprob"] for b in beams) / len(beams) for beams in per_prompt) / k,
        }

    out["summary"] = {"vllm_beam_search": summary(out["vllm"])}
    for name, r in out["dbs"].items():
        out["summary"][name] = summary(r["beams"])
    plain = out["dbs"]["G1_lambda0.0"]["beams"]
    out["g1_equals_vllm"] = {
        "token_ids": all([b["token_ids"] for b in mine] == [b["token_ids"] for b in ref]
                         for mine, ref in zip(plain, out["vllm"])),
        "max_abs_cum_logprob_diff": max(abs(a["cum_logprob"] - b["cum_logprob"])
                                        for mine, ref in zip(plain, out["vllm"]) for a, b in zip(mine, ref)),
    }
    out["texts_G4_lambda1.0_prompt0"] = [b["text"] for b in out["dbs"]["G4_lambda1.0"]["beams"][0]]
    out["texts_vllm_prompt0"] = [tokenizer.decode(b["token_ids"]) for b in out["vllm"][0]]
    return out


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Child side: one engine, no plugin selected."""
    from vllm import LLM

    llm = LLM(model=payload["model"], **CPU_ENGINE_KWARGS)
    report = beam_searches(llm, payload["prompts"], payload["beam_width"], payload["max_tokens"])
    return {"benchmark": "diverse-beam", "model": payload["model"], "engine": CPU_ENGINE_KWARGS, **report}


def run(args) -> dict[str, Any]:
    payload = {"model": str(args.model or default_model()), "prompts": args.prompts, "beam_width": args.beam_width,
               "max_tokens": args.max_tokens}
    return call_in_child(MEASURE_TARGET, payload, env={"DECLAB_PLUGINS": None}, timeout=None,
                         name="diverse-beam engine")


def summary(report: dict[str, Any]) -> str:
    lines = [f"{name:<18} " + "  ".join(f"{k} {v:.3f}" for k, v in s.items()) for name, s in report["summary"].items()]
    lines.append(f"G=1, λ=0 equals LLM.beam_search: {report['g1_equals_vllm']}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["summary"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(range(len(names)), [report["summary"][n]["distinct_2"] for n in names])
    ax1.set_title("distinct-2 of the returned beams (mean over prompts)")
    ax2.bar(range(len(names)), [report["summary"][n]["best_cum_logprob"] for n in names])
    ax2.set_title("cumulative log-prob of the best beam")
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
