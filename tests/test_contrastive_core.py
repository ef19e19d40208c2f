"""Pure tests of the contrastive methods (CAD, LQCD, M3ID) and of the shared sampling helpers of
``declab.plugins.shared.contrastive`` (no engine). The last tests run the plain-transformers two-pass reference
(``tests/contrastive_reference.py``) on a few items of the fact-world dev sets."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stats import goodness_of_fit

from declab.integrations import registry
from declab.integrations.sdk.params import resolve_params
from declab.plugins.cad.core import CADProcessor, cad_logits
from declab.plugins.shared.contrastive import LOGP_FLOOR, log_probs, mix_logprobs
from declab.integrations.sdk.rows import RowContext
from declab.integrations.sdk.sampling import draw_token, force_token, sampling_probs, step_generator
from declab.plugins.shared.contrastive import ContrastiveProcessor
from declab.integrations.sdk.sampling import SamplingSettings
from declab.plugins.shared.contrastive_args import CONTRAST_PROMPT_PARAM
from declab.plugins.lqcd.core import LQCDProcessor, lqcd_logits, plausibility_mask
from declab.plugins.m3id.core import MAX_WEIGHT, M3IDProcessor, m3id_gate, m3id_logits, m3id_weight

NEG = float("-inf")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies ----------------------------------------------------------------------------------------------------
def _row(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


finite_rows = st.integers(2, 24).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=n, max_size=n),
        st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=n, max_size=n),
    )
)
# Rows with engine-style masks and garbage: -inf, NaN, +inf, huge values.
weird = st.one_of(st.floats(-30, 30, allow_nan=False, width=32), st.just(NEG), st.just(float("nan")),
                  st.just(float("inf")), st.just(3.0e38), st.just(-3.0e38))
weird_rows = st.integers(1, 16).flatmap(
    lambda n: st.tuples(st.lists(weird, min_size=n, max_size=n), st.lists(weird, min_size=n, max_size=n))
)
alphas = st.floats(0.0, 10.0, allow_nan=False)


def _same_distribution(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4) -> bool:
    return torch.allclose(torch.softmax(a.double(), -1), torch.softmax(b.double(), -1), atol=atol)


def _differs_by_constant(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-3) -> bool:
    d = (a.double() - b.double())
    return bool((d - d.mean()).abs().max() <= atol)


def _sane(out: torch.Tensor) -> bool:
    return (not bool(torch.isnan(out).any())) and (not bool(torch.isposinf(out).any())) and bool(
        torch.isfinite(out).any())


# -- shared log-probability mix ------------------------------------------------------------------------------------
def test_log_probs_masks_and_garbage():
    lp = log_probs(_row([1.0, NEG, float("nan"), 2.0]))
    assert torch.isneginf(lp[1]) and torch.isneginf(lp[2])
    assert torch.allclose(lp[[0, 3]].exp().sum(), torch.tensor(1.0))
    assert bool(torch.isneginf(log_probs(_row([NEG, NEG]))).all())
    # +inf reads as the largest float: it takes all the mass, the others are floored, nothing is NaN.
    lp = log_probs(_row([float("inf"), 0.0, -3.0e38]))
    assert lp[0] == 0.0 and bool((lp[1:] >= LOGP_FLOOR).all()) and not bool(torch.isnan(lp).any())


@FAST
@given(weird_rows, st.floats(-11.0, 11.0, allow_nan=False))
def test_mix_never_nan_never_all_neg_inf(rows, w):
    m, c = _row(rows[0]), _row(rows[1])
    out = mix_logprobs(m, c, 1.0 + w, -w)
    assert _sane(out)
    main_ok = torch.isfinite(torch.nan_to_num(m, nan=NEG, posinf=1.0, neginf=NEG))
    if bool(main_ok.any()):
        # -inf / NaN in the main row stay -inf; every finite main token stays finite.
        assert torch.equal(torch.isfinite(out), main_ok)


def test_mix_contrast_neg_inf_keeps_main_value():
    m, c = _row([0.0, 1.0, 2.0]), _row([0.5, NEG, 0.0])
    out = mix_logprobs(m, c, 1.5, -0.5)
    assert torch.isclose(out[1], log_probs(m)[1])
    assert torch.isfinite(out).all()


def test_mix_main_all_neg_inf_falls_back():
    c = _row([0.0, 1.0, NEG])
    assert torch.equal(mix_logprobs(_row([NEG, NEG, float("nan")]), c, 1.5, -0.5), log_probs(c))
    assert torch.equal(mix_logprobs(_row([NEG, NEG]), _row([NEG, float("nan")]), 2.0, -1.0), torch.zeros(2))


# -- CAD ----------------------------------------------------------------------------------------------------------
@FAST
@given(finite_rows, alphas)
def test_cad_equals_formula(rows, alpha):
    m, c = _row(rows[0]), _row(rows[1])
    out = cad_logits(m, c, alpha)
    # (1+a)*logit(y|c,x) - a*logit(y|x), up to one constant per row (log-probs instead of logits).
    assert _differs_by_constant(out, (1 + alpha) * m.double() - alpha * c.double())
    assert _same_distribution(out, (1 + alpha) * m.double() - alpha * c.double())


@FAST
@given(finite_rows)
def test_cad_alpha_zero_is_the_main_row(rows):
    m, c = _row(rows[0]), _row(rows[1])
    out = cad_logits(m, c, 0.0)
    assert _same_distribution(out, m)
    assert float(out[int(torch.argmax(m))]) == float(out.max())


def test_cad_amplifies_what_the_context_adds():
    # Token 0 is what the context supports, token 1 the memorised prior: main prefers 0 only slightly.
    main = _row([2.0, 1.9, 0.0])
    no_context = _row([0.0, 3.0, 0.0])
    out = cad_logits(main, no_context, 0.5)
    p_main, p_cad = torch.softmax(main, -1), torch.softmax(out, -1)
    assert p_cad[0] > p_main[0] and p_cad[1] < p_main[1]
    assert int(torch.argmax(cad_logits(_row([1.0, 1.2]), _row([0.0, 3.0]), 0.5))) == 0


def test_cad_processor_defaults_and_contract():
    spec = registry.get_spec("cad")
    params = resolve_params(spec.params, {"contrast_prompt": "Q: x\nA:"})
    assert params["alpha"] == 0.5
    proc = spec.load_row_processor()(params, [1, 2], [], RowContext(vocab_size=4))
    assert isinstance(proc, CADProcessor) and isinstance(proc, ContrastiveProcessor) and proc.grouped
    m, c = _row([0.0, 1.0, 2.0, NEG]), _row([1.0, 0.0, 0.0, 0.0])
    before = m.clone()
    out = proc.contrast(m, c, 3)
    assert torch.equal(m, before)  # inputs are not modified (the router forces tokens on them afterwards)
    assert torch.allclose(out, cad_logits(m, c, 0.5))
    row = _row([0.3, 0.1])
    assert proc(row) is row  # an unpaired call keeps the row


# -- LQCD ---------------------------------------------------------------------------------------------------------
@FAST
@given(finite_rows, alphas)
def test_lqcd_equals_formula(rows, alpha):
    leading, neutral = _row(rows[0]), _row(rows[1])
    out = lqcd_logits(leading, neutral, alpha)
    # (1+a)*logit(y|x_n) - a*logit(y|x_l): the neutral query amplified, the leading one subtracted.
    ref = (1 + alpha) * neutral.double() - alpha * leading.double()
    assert _differs_by_constant(out, ref)
    assert _same_distribution(out, ref)


@FAST
@given(finite_rows)
def test_lqcd_alpha_zero_is_the_neutral_row(rows):
    leading, neutral = _row(rows[0]), _row(rows[1])
    assert _same_distribution(lqcd_logits(leading, neutral, 0.0), neutral)


def test_lqcd_suppresses_the_suggestion():
    # Token 1 is the suggested (wrong) answer: the cue lifted it above the true answer (token 0).
    leading = _row([1.0, 2.5, 0.0])
    neutral = _row([2.0, 1.0, 0.0])
    assert int(torch.argmax(leading)) == 1
    assert int(torch.argmax(lqcd_logits(leading, neutral, 0.5))) == 0
    # The more alpha, the less mass on the suggestion.
    p = [float(torch.softmax(lqcd_logits(leading, neutral, a), -1)[1]) for a in (0.0, 0.5, 1.0, 2.0)]
    assert p == sorted(p, reverse=True)


@FAST
@given(finite_rows, st.floats(0.0, 1.0), alphas)
def test_lqcd_plausibility_constraint(rows, beta, alpha):
    leading, neutral = _row(rows[0]), _row(rows[1])
    out = lqcd_logits(leading, neutral, alpha, beta)
    assert _sane(out)
    keep = plausibility_mask(neutral, beta)
    assert bool(keep[int(torch.argmax(neutral))])  # the neutral row's best token always stays
    assert torch.equal(torch.isfinite(out), keep)
    if beta == 0.0:
        assert torch.equal(out, lqcd_logits(leading, neutral, alpha))


def test_lqcd_processor_roles():
    spec = registry.get_spec("lqcd")
    params = resolve_params(spec.params, {"contrast_prompt": "neutral"})
    assert params["alpha"] == 0.5 and params["beta"] == 0.0
    proc = spec.load_row_processor()(params, [], [], RowContext(vocab_size=3))
    assert isinstance(proc, LQCDProcessor)
    leading, neutral = _row([1.0, 2.5, 0.0]), _row([2.0, 1.0, 0.0])  # main = leading, contrast = neutral
    assert torch.allclose(proc.contrast(leading, neutral, 0), lqcd_logits(leading, neutral, 0.5))


# -- M3ID ---------------------------------------------------------------------------------------------------------
@FAST
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.floats(0.0, 1.0, allow_nan=False))
def test_m3id_weight_monotone_in_step(s1, s2, lam):
    lo, hi = sorted((s1, s2))
    assert 0.0 <= m3id_weight(lo, lam) <= m3id_weight(hi, lam) <= MAX_WEIGHT
    assert math.isfinite(m3id_weight(hi, lam))


def test_m3id_weight_values():
    # gamma_t = exp(-lam*t), t = step + 1: weight (1-gamma_t)/gamma_t = exp(lam*t) - 1.
    for step, lam in ((0, 0.02), (9, 0.02), (99, 0.02), (3, 0.5)):
        t = step + 1
        gamma = math.exp(-lam * t)
        assert m3id_weight(step, lam) == pytest.approx((1 - gamma) / gamma, rel=1e-9)
    assert m3id_weight(5, 0.0) == 0.0
    assert m3id_weight(10**9, 1.0) == MAX_WEIGHT


def test_m3id_gate():
    confident = _row([5.0, 0.0, 0.0])  # top probability ~0.99
    unsure = _row([0.1, 0.0, 0.0, 0.05])  # ~0.26
    assert not m3id_gate(confident, 0.3) and m3id_gate(unsure, 0.3)
    assert not m3id_gate(unsure, 0.0) and m3id_gate(unsure, 1.0)
    assert not m3id_gate(_row([NEG, NEG]), 1.0)


@FAST
@given(finite_rows, st.integers(0, 500), st.floats(0.0, 0.2, allow_nan=False), st.floats(0.0, 1.0))
def test_m3id_equals_formula(rows, step, lam, threshold):
    lc_row, lu_row = _row(rows[0]), _row(rows[1])
    out = m3id_logits(lc_row, lu_row, step, lam, threshold)
    assert _sane(out)
    lc, lu = torch.log_softmax(lc_row.double(), -1), torch.log_softmax(lu_row.double(), -1)
    gate = float(lc.max()) < math.log(threshold) if threshold > 0 else False
    w = (math.exp(lam * (step + 1)) - 1) if gate else 0.0
    assume(w < 50)  # beyond that float32 rounding of the large mixed logits exceeds the comparison tolerance
    ref = lc + w * (lc - lu)
    assert _same_distribution(out, ref, atol=1e-4)


def test_m3id_defaults_and_growth():
    spec = registry.get_spec("m3id")
    params = resolve_params(spec.params, {"contrast_prompt": "Q:"})
    assert params["lam"] == 0.02 and params["threshold"] == 0.3
    proc = spec.load_row_processor()(params, [], [], RowContext(vocab_size=4))
    assert isinstance(proc, M3IDProcessor)
    cond = _row([0.2, 0.1, 0.0, 0.15])  # unsure: the gate is open
    uncond = _row([0.0, 2.0, 0.0, 0.0])  # the language prior prefers token 1
    # The same rows later in the generation: the conditioned direction (away from token 1) weighs more.
    p1 = [float(torch.softmax(proc.contrast(cond, uncond, s), -1)[1]) for s in (0, 10, 50, 200)]
    assert p1 == sorted(p1, reverse=True) and p1[-1] < p1[0]
    confident = _row([6.0, 0.0, 0.0, 0.0])
    assert torch.allclose(proc.contrast(confident, uncond, 500), log_probs(confident))  # gate closed: plain


# -- properties shared by the three processors ------------------------------------------------------------------------
def _processors():
    out = []
    for name in ("cad", "lqcd", "m3id"):
        spec = registry.get_spec(name)
        out.append(spec.load_row_processor()(resolve_params(spec.params, {"contrast_prompt": "x"}), [], [],
                                              RowContext(vocab_size=16)))
    return out


@FAST
@given(weird_rows, st.integers(0, 5000))
def test_every_processor_is_safe_on_masked_rows(rows, step):
    m, c = _row(rows[0]), _row(rows[1])
    for proc in _processors():
        out = proc.contrast(m, c, step)
        assert out.shape == m.shape and out.dtype == torch.float32
        assert _sane(out), (type(proc).__name__, m, c, out)
        token = draw_token(out, SamplingSettings(temperature=0.0), step)
        assert math.isfinite(float(out[token]))
        token = draw_token(out, SamplingSettings(temperature=1.0, top_p=0.9, seed=3), step)
        assert math.isfinite(float(out[token]))


def test_specs_registered():
    for name, paper, status in (("cad", 53, "working"), ("lqcd", 25, "working"), ("m3id", 1, "partial")):
        spec = registry.get_spec(name)
        assert (spec.paper, spec.status, spec.hook) == (paper, status, registry.HOOK_LOGITS)
        assert spec.patches == () and spec.logits.companions == (CONTRAST_PROMPT_PARAM.name,)
        assert spec.params[0] is CONTRAST_PROMPT_PARAM
        assert issubclass(spec.load_row_processor(), ContrastiveProcessor)
        with pytest.raises(ValueError, match="contrast_prompt"):
            resolve_params(spec.params, {})
    assert registry.get_spec("m3id").reason
    cad = registry.get_spec("cad")
    with pytest.raises(ValueError, match="declab.alpha"):
        resolve_params(cad.params, {"contrast_prompt": "x", "alpha": 11.0})
    with pytest.raises(ValueError, match="declab.alpha"):
        resolve_params(cad.params, {"contrast_prompt": "x", "alpha": -0.1})
    with pytest.raises(ValueError, match="declab.threshold"):
        resolve_params(registry.get_spec("m3id").params, {"contrast_prompt": "x", "threshold": 1.5})


# -- sampling helpers of declab.plugins.shared.contrastive ---------------------------------------------------------------
random_rows = st.integers(2, 64).flatmap(
    lambda n: st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=n, max_size=n))


@FAST
@given(random_rows, st.sampled_from([0.0, 1e-6, 5e-6]))
def test_greedy_is_argmax(values, temperature):
    row = _row(values)
    assert draw_token(row, SamplingSettings(temperature=temperature, top_p=0.5, seed=1), 0) == int(torch.argmax(row))


@FAST
@given(random_rows, st.floats(0.05, 5.0), st.integers(0, 2**31), st.integers(0, 1000))
def test_top_k_one_is_argmax(values, temperature, seed, step):
    row = _row(values)
    assume(int((row == row.max()).sum()) == 1)
    s = SamplingSettings(temperature=temperature, top_k=1, seed=seed)
    assert draw_token(row, s, step) == int(torch.argmax(row))


@FAST
@given(random_rows, st.floats(0.05, 5.0), st.floats(1e-6, 1.0), st.integers(0, 500), st.floats(0.0, 1.0))
def test_top_p_keeps_the_most_likely_token(values, temperature, top_p, top_k, min_p):
    row = _row(values)
    probs = sampling_probs(row, SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p))
    assert float(probs[int(torch.argmax(row))]) > 0.0
    assert torch.isclose(probs.sum(), torch.tensor(1.0), atol=1e-5)
    assume(int((row == row.max()).sum()) == 1)
    s = SamplingSettings(temperature=temperature, top_p=1e-7, seed=7)
    assert draw_token(row, s, 0) == int(torch.argmax(row))


def _vllm_order_reference(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """Support set of vLLM's sampler (temperature, min-p processor, then apply_top_k_top_p_pytorch: ascending sort,
    drop while the ascending cumulative mass is <= 1 - p, keep the last)."""
    x = logits.double() / s.temperature
    if s.min_p > 0:
        p = torch.softmax(x, -1)
        x = x.masked_fill(p < s.min_p * p.max(), NEG)
    xs, idx = x.sort(descending=False)
    if 0 < s.top_k < xs.numel():
        xs = xs.masked_fill(xs < xs[xs.numel() - s.top_k], NEG)
    if s.top_p < 1:
        cum = torch.softmax(xs, -1).cumsum(-1)
        mask = cum <= 1 - s.top_p
        mask[-1] = False
        xs = xs.masked_fill(mask, NEG)
    out = torch.empty_like(xs)
    out[idx] = xs
    return torch.isfinite(out)


def test_sampling_order_matches_vllm():
    # min-p before top-p matters: probs 0.5/0.3/0.2, min_p 0.5 keeps 0.5/0.3 (renormalised 0.625/0.375), then
    # top-p 0.6 keeps only the first. Applying top-p first (the old order) kept two tokens.
    row = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    s = SamplingSettings(temperature=1.0, top_p=0.6, min_p=0.5)
    assert torch.equal(sampling_probs(row, s) > 0, torch.tensor([True, False, False]))
    assert torch.equal(_vllm_order_reference(row, s), torch.tensor([True, False, False]))


distinct_rows = st.integers(2, 64).flatmap(  # (nearly) tied logits may be cut at a boundary in either order
    lambda n: st.lists(st.integers(-2000, 2000), min_size=n, max_size=n, unique=True).map(
        lambda xs: [x / 100 for x in xs]))


@FAST
@given(distinct_rows, st.floats(0.2, 3.0), st.floats(0.05, 1.0), st.integers(0, 10), st.floats(0.0, 0.9))
def test_sampling_support_matches_vllm(values, temperature, top_p, top_k, min_p):
    row = _row(values)
    s = SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
    ours = sampling_probs(row, s) > 0
    ref = _vllm_order_reference(row, s)
    # Compare where float32 can represent the probability at all, and allow one token at a top-p boundary that
    # float32 and float64 cumulative sums put on different sides.
    visible = torch.softmax(row.double() / temperature, -1) > 1e-30
    assert int((ours != ref)[visible].sum()) <= 1


def test_seeded_draw_depends_only_on_seed_and_step():
    row = torch.zeros(50)  # uniform: every draw is informative
    s = SamplingSettings(temperature=1.0, seed=1234)
    first = [draw_token(row, s, step) for step in range(40)]
    torch.manual_seed(999)
    torch.rand(100)  # disturb the global RNG
    again = [draw_token(row, s, step) for step in reversed(range(40))][::-1]  # other order, other history
    assert first == again
    assert len(set(first)) > 10  # steps get different streams
    other_seed = [draw_token(row, SamplingSettings(temperature=1.0, seed=1235), step) for step in range(40)]
    assert other_seed != first
    # The generator itself: same (seed, step) -> same state; different step -> different state.
    assert torch.equal(step_generator(5, 3).get_state(), step_generator(5, 3).get_state())
    assert not torch.equal(step_generator(5, 3).get_state(), step_generator(5, 4).get_state())
    assert not torch.equal(step_generator(5, 3).get_state(), step_generator(6, 3).get_state())


def test_draw_frequencies_match_softmax():
    """G-test (``stats.goodness_of_fit``) of seeded draws against softmax(logits / T), with negative controls that
    must fail the same test: draws that ignore the temperature, and seeds whose streams repeat."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, NEG])

    def softmax(temperature: float) -> dict[int, float]:
        return dict(enumerate(torch.softmax(logits.double() / temperature, -1).tolist()))

    def draws(temperature: float, seeds, step: int) -> list[int]:
        # One seeded draw per request seed: also checks the streams are independent across seeds.
        return [draw_token(logits, SamplingSettings(temperature=temperature, seed=i), step) for i in seeds]

    n = 20_000
    t1 = draws(1.0, range(n), 0)
    t2 = draws(2.0, range(10**6, 10**6 + n), 7)  # temperature 2 flattens
    assert 5 not in t1 + t2  # a -inf token is never drawn (the test would fail too: p = 0)
    assert goodness_of_fit(t1, softmax(1.0)).passes, goodness_of_fit(t1, softmax(1.0))
    assert goodness_of_fit(t2, softmax(2.0)).passes, goodness_of_fit(t2, softmax(2.0))
    # Negative controls: a sampler that ignores the temperature draws t1 at T=2; one whose streams depend on the
    # seed modulo 100 repeats 100 draws.
    assert not goodness_of_fit(t1, softmax(2.0)).passes
    repeated = draws(1.0, [i % 100 for i in range(n // 4)], 0)
    assert not goodness_of_fit(repeated, softmax(1.0)).passes, goodness_of_fit(repeated, softmax(1.0))


def test_force_token_and_settings_roundtrip():
    row = torch.randn(10)
    force_token(row, 7)
    assert int(torch.argmax(row)) == 7 and int(torch.isfinite(row).sum()) == 1
    for s in (SamplingSettings(temperature=0.8, top_p=0.9, seed=3), SamplingSettings(temperature=1.5, top_k=4)):
        assert draw_token(row, s, 2) == 7
    s = SamplingSettings(temperature=0.7, top_k=5, top_p=0.8, min_p=0.1, seed=42)
    assert SamplingSettings.from_dict(s.to_dict()) == s
    assert SamplingSettings(temperature=0.0).greedy and not SamplingSettings(temperature=0.01).greedy


# -- the plain-transformers reference (tests/contrastive_reference.py) ----------------------------------------------
sys.path.insert(0, str(Path(__file__).resolve().parent))
import contrastive_reference as reference  # noqa: E402


@pytest.fixture(scope="module")
def hf_model():
    torch.set_num_threads(2)
    return reference.load_model()


def test_tokenizer_adds_no_special_tokens(hf_model):
    _, tok = hf_model
    text = "Question: Where is Mikagro Works headquartered?\nAnswer:"
    assert reference.encode(tok, text) == tok.encode(text, add_special_tokens=False)


@pytest.mark.skipif(reference.eval_file("conflict_dev.jsonl") is None, reason="../shared/eval not present")
def test_reference_plain_equals_hf_generate_and_batching_is_exact(hf_model):
    model, tok = hf_model
    items = reference.load_set("conflict", 6)
    pairs = [(it["prompt_with_context"], it["prompt_without_context"]) for it in items]
    plain = reference.generate_pairs(model, tok, pairs, None, max_tokens=6, batch_size=6, stop_at_newline=False)
    for (prompt, _), g in zip(pairs, plain, strict=True):
        ids = torch.tensor([reference.encode(tok, prompt)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
        assert g.token_ids == ref[0, ids.shape[1]:].tolist()[: len(g.token_ids)]
    vocab = model.get_output_embeddings().weight.shape[0]
    cad0 = lambda: reference.make_processor("cad", {"alpha": 0.0}, vocab, tok.eos_token_id)  # noqa: E731
    cad = lambda: reference.make_processor("cad", {"alpha": 0.5}, vocab, tok.eos_token_id)  # noqa: E731
    alpha0 = reference.generate_pairs(model, tok, pairs, cad0, max_tokens=6, batch_size=6, stop_at_newline=False)
    assert [g.token_ids for g in alpha0] == [g.token_ids for g in plain]
    one = reference.generate_pairs(model, tok, pairs, cad, max_tokens=6, batch_size=1)
    many = reference.generate_pairs(model, tok, pairs, cad, max_tokens=6, batch_size=6)
    assert [g.token_ids for g in one] == [g.token_ids for g in many]
