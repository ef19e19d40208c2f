"""Classifier-free guidance (``cfg``) through a real vLLM engine on decoder-29m (CPU), on the companion-row seam.

* Equivalence with a two-pass plain-transformers reference (``contrastive_reference.generate_pairs`` with HF
  transformers' formula ``uncond + g * (cond - uncond)`` written out here, not the plugin's code) on code prompts and
  short Spec-Bench prompts, all in one engine batch: half with an empty ``negative_prompt`` (the unconditional
  stream starts from the prompt's last token, HF's rule), half with a negative prompt, at two guidance scales.
* With the negative prompt set to the context-free prompt, CFG at ``g`` gives CAD's tokens at ``alpha = g - 1`` on
  ``conflict_dev`` (both in the same batch).
* Bad values are a ``ValueError`` naming the parameter and the engine keeps serving; companions are freed.

Engine: the ``contrastive`` profile (shared with ``test_contrastive_engine.py`` / ``test_contrastive_reference.py``).
"""

from __future__ import annotations

import math
import os

import contrastive_reference as ref
import pytest
import torch
from contrastive_requests import MAX_TOKENS, engine_state, generate, load_items

from declab.integrations.models import eval_file
from declab.integrations.prompts import CODE_PROMPTS, spec_bench_prompts

pytestmark = pytest.mark.engine
GEN_TOKENS = 16
SCALES = (1.5, 3.0)
PER_CATEGORY = 12  # short Spec-Bench prompts (<= 400 characters) per category
N_CONFLICT = int(os.environ.get("DECLAB_CONTRASTIVE_ITEMS", "100"))
CAD_PAIRS = ((1.5, 0.5), (2.0, 1.0))  # (guidance_scale, CAD's alpha = g - 1)


def equivalence_prompts() -> list[str]:
    """Every code prompt and up to ``PER_CATEGORY`` short first turns per Spec-Bench category (when present)."""
    per_cat: dict[str, list[str]] = {}
    for cat, text in spec_bench_prompts(max_chars=400):
        if len(per_cat.setdefault(cat, [])) < PER_CATEGORY:
            per_cat[cat].append(text)
    return list(CODE_PROMPTS) + [p for ps in per_cat.values() for p in ps]


def equivalence_cases() -> list[tuple[str, str, float]]:
    """(prompt, negative prompt, g): even items with an empty negative prompt, odd ones with the prompt's second
    half as the negative; the scales alternate in pairs."""
    out = []
    for i, prompt in enumerate(equivalence_prompts()):
        negative = "" if i % 2 == 0 else prompt[len(prompt) // 2:]
        out.append((prompt, negative, SCALES[(i // 2) % len(SCALES)]))
    return out


def cfg_params(negative: str, g: float, max_tokens: int = GEN_TOKENS):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens,
                          extra_args={"declab": {"method": "cfg", "guidance_scale": g, "negative_prompt": negative}})


def engine_runs(llm, n_conflict: int) -> dict:
    from vllm import SamplingParams

    start = engine_state(llm)
    cases = equivalence_cases()
    guided = generate(llm, [p for p, _, _ in cases], [cfg_params(n, g) for _, n, g in cases])
    plain = generate(llm, [p for p, _, _ in cases], SamplingParams(temperature=0.0, max_tokens=GEN_TOKENS))

    # CFG with the context-free prompt as negative vs CAD at alpha = g - 1, all in one batch.
    conflict, _ = load_items(n_conflict)
    prompts, params = [], []
    for g, alpha in CAD_PAIRS:
        for it in conflict:
            prompts += [it["prompt_with_context"]] * 2
            params += [cfg_params(it["prompt_without_context"], g, MAX_TOKENS),
                       SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                      extra_args={"declab": {"method": "cad", "alpha": alpha,
                                                             "contrast_prompt": it["prompt_without_context"]}})]
    outs = generate(llm, prompts, params)
    vs_cad = {str(g): {"cfg": outs[2 * k * len(conflict):2 * (k + 1) * len(conflict):2],
                       "cad": outs[2 * k * len(conflict) + 1:2 * (k + 1) * len(conflict):2]}
              for k, (g, _) in enumerate(CAD_PAIRS)}
    plain_conflict = generate(llm, [it["prompt_with_context"] for it in conflict],
                              SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))

    errors = {}
    for label, value in (("nan", math.nan), ("inf", math.inf), ("high", 30.5), ("negative", -1.0), ("text", "2")):
        sp = SamplingParams(temperature=0.0, max_tokens=4,
                            extra_args={"declab": {"method": "cfg", "guidance_scale": value}})
        try:
            generate(llm, [CODE_PROMPTS[0]], sp)
            errors[label] = None
        except Exception as e:  # noqa: BLE001 - the test checks the type name and the message
            errors[label] = f"{type(e).__name__}: {e}"
    after_errors = generate(llm, [CODE_PROMPTS[0]], cfg_params("", 1.5))
    return {"cases": cases, "guided": guided, "plain": plain, "vs_cad": vs_cad, "plain_conflict": plain_conflict,
            "errors": errors, "after_errors": after_errors, "start": start, "end": engine_state(llm)}


class HFGuidance:
    """HF transformers' classifier-free guidance step, written from its definition (not the plugin's code)."""

    def __init__(self, g: float) -> None:
        self.g = g

    def contrast(self, cond: torch.Tensor, uncond: torch.Tensor, step: int) -> torch.Tensor:
        lc, lu = torch.log_softmax(cond.float(), -1), torch.log_softmax(uncond.float(), -1)
        return lu + self.g * (lc - lu)


@pytest.fixture(scope="session")
def runs(contrastive_engine):
    if eval_file("conflict_dev.jsonl") is None:
        pytest.skip("../shared/eval is not present")
    return contrastive_engine.run(engine_runs, N_CONFLICT)


@pytest.fixture(scope="session")
def reference_tokens(runs):
    model, tok = ref.load_model()
    cases = runs["cases"]
    expected: list[list[int] | None] = [None] * len(cases)
    for g in SCALES:
        idx = [i for i, (_, _, gi) in enumerate(cases) if gi == g]
        gens = ref.generate_pairs(model, tok, [(cases[i][0], cases[i][1]) for i in idx], lambda g=g: HFGuidance(g),
                                  max_tokens=GEN_TOKENS, stop_at_newline=False)
        for i, gen in zip(idx, gens, strict=True):
            expected[i] = gen.token_ids
    return expected


def test_engine_equals_two_pass_reference(runs, reference_tokens):
    cases, got = runs["cases"], [o["token_ids"] for o in runs["guided"]]
    assert len(cases) >= 100
    differ = [i for i, (a, b) in enumerate(zip(got, reference_tokens, strict=True)) if a != b]
    empty = [i for i, (_, n, _) in enumerate(cases) if not n]
    print(f"cfg: {len(cases) - len(differ)}/{len(cases)} token-identical to the two-pass reference "
          f"({len(empty) - len(set(differ) & set(empty))}/{len(empty)} with an empty negative prompt); "
          f"differing: {differ[:10]}")
    assert (len(cases) - len(differ)) / len(cases) >= 0.99, differ[:10]


def test_guidance_changes_outputs(runs):
    """A dropped companion row (plain decoding) would pass the reference test only if guidance changed nothing."""
    changed = sum(g["token_ids"] != p["token_ids"] for g, p in zip(runs["guided"], runs["plain"], strict=True))
    print(f"cfg: {changed}/{len(runs['cases'])} outputs differ from plain greedy")
    assert changed >= len(runs["cases"]) // 2


@pytest.mark.parametrize("g", [str(g) for g, _ in CAD_PAIRS])
def test_cfg_with_the_context_free_prompt_reproduces_cad(runs, g):
    pair = runs["vs_cad"][g]
    same = sum(a["token_ids"] == b["token_ids"] for a, b in zip(pair["cfg"], pair["cad"], strict=True))
    changed = sum(c["text"] != p["text"] for c, p in zip(pair["cad"], runs["plain_conflict"], strict=True))
    print(f"cfg g={g} vs cad alpha={float(g) - 1}: {same}/{len(pair['cad'])} token-identical; CAD changes "
          f"{changed} answers from plain greedy")
    assert same == len(pair["cad"]) == N_CONFLICT
    assert changed > 0


def test_bad_values_are_validation_errors_naming_the_parameter(runs):
    for label, error in runs["errors"].items():
        assert error and error.split(":")[0] in ("ValueError", "VLLMValidationError"), (label, error)
        assert "declab.guidance_scale" in error, (label, error)
    assert runs["after_errors"][0]["token_ids"]


def test_companions_are_freed(runs):
    start, end = runs["start"], runs["end"]
    assert end["requests_left"] == 0 and end["running"] == 0 and end["pairs_left"] == 0
    assert end["free_blocks"] == start["free_blocks"]
