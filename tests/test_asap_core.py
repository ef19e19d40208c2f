"""Unit and property tests of the ASAp / GCD core (xgrammar + torch, no vLLM)."""

from __future__ import annotations

import hashlib
import math
import random
import tracemalloc
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stats import goodness_of_fit

from declab.integrations.sdk.params import resolve_params
from declab.plugins.asap import core
from declab.plugins.asap.core import (
    AsapProcessor,
    AsapTrie,
    GcdProcessor,
    GrammarCache,
    GrammarSource,
    TrieStore,
    complete_sequences,
    exact_distributions,
    grammar_prefix_tree,
    kl_divergence,
)
from declab.plugins.asap.gcd_spec import SPEC as GCD_SPEC
from declab.plugins.asap.gcd_spec import validate_request as gcd_validate
from declab.plugins.asap.spec import SPEC, validate_request
from declab.integrations.sdk.rows import RowContext
from declab.integrations.sdk.sampling import SamplingSettings

NEG = float("-inf")
EOS = 0
# A toy byte vocabulary: id 0 is EOS; several tokens spell the same strings (competing tokenizations).
TOY_VOCAB = ["<eos>", "0", "1", "00", "01", "10", "11", "000", "011", "a", "b", "ab", "x"]
V = len(TOY_VOCAB)
BITS3 = 'root ::= ("0" | "1") ("0" | "1") ("0" | "1")'
AB = 'root ::= ("a" | "ab") ("b" | "a")? | "bb"'


@pytest.fixture(autouse=True)
def fresh_store():
    core.configure(budget_bytes=64 * 1024 * 1024)
    core.STORE.clear()
    yield
    core.STORE.clear()
    core.configure(budget_bytes=core.DEFAULT_BUDGET_MB * 1024 * 1024)


@pytest.fixture(scope="module")
def toy_cache():
    return GrammarCache.from_vocab(TOY_VOCAB, vocab_type="raw", vocab_size=V, stop_token_ids=[EOS])


def toy_ctx(cache):
    return SimpleNamespace(vocab_size=V, eos_token_id=EOS, tokenize=None, grammar_cache=cache)


def toy_logits(prefix, seed=0, scale=2.5):
    """A deterministic toy LM: logits are a hash of (seed, prefix)."""
    h = hashlib.sha256(f"{seed}:{list(prefix)}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(h[:8], "little"))
    return torch.randn(V, generator=g, dtype=torch.float32) * scale


def params(spec=SPEC, **kw):
    return resolve_params(spec.params, kw)


def make(cls, cache, grammar, output, prompt=(1, 2), **kw):
    spec = SPEC if cls is AsapProcessor else GCD_SPEC
    return cls(params(spec, grammar=grammar, **kw), list(prompt), output, toy_ctx(cache))


def run_request(cache, grammar, tokens, seed=0, **kw):
    """Drive one ASAp request along ``tokens`` (the last one may be EOS); returns the rows it produced."""
    out: list[int] = []
    proc = make(AsapProcessor, cache, grammar, out, **kw)
    rows = []
    for t in tokens:
        rows.append(proc(toy_logits(out, seed)).clone())
        out.append(t)
    return proc, rows


def exact_for(cache, grammar, seed=0, temperature=1.0):
    compiled = cache.compile(GrammarSource("grammar", grammar))
    tree = grammar_prefix_tree(compiled, vocab_size=V, stop_token_ids=[EOS])
    logprobs = {p: torch.log_softmax(toy_logits(p, seed).double() / temperature, -1) for p in tree}
    target, gcd, log_z = exact_distributions(tree, logprobs, [EOS])
    return tree, logprobs, target, gcd, log_z


def true_log_efg(tree, logprobs, prefix):
    """log EFG(prefix) by brute force: sum over complete sequences extending it."""
    terms = []
    for w in complete_sequences(tree, [EOS]):
        if w[: len(prefix)] == tuple(prefix):
            terms.append(sum(float(logprobs[w[:i]][w[i]]) for i in range(len(prefix), len(w))))
    return core._logsumexp(terms)


# ---------------------------------------------------------------------------------------------------------------
# grammar enumeration and the exact reference


def test_prefix_tree_of_three_bits_has_every_tokenization(toy_cache):
    compiled = toy_cache.compile(GrammarSource("grammar", BITS3))
    tree = grammar_prefix_tree(compiled, vocab_size=V, stop_token_ids=[EOS])
    seqs = complete_sequences(tree, [EOS])
    texts = {}
    for w in seqs:
        assert w[-1] == EOS
        texts.setdefault("".join(TOY_VOCAB[t] for t in w[:-1]), []).append(w)
    assert sorted(texts) == [f"{i:03b}" for i in range(8)]
    # "011" has 1+1+1, 0+11, 01+1 and 011; "000" has 0+0+0, 00+0, 0+00 and 000
    assert len(texts["011"]) == 4 and len(texts["000"]) == 4 and len(texts["101"]) == 3
    with pytest.raises(ValueError, match="or more"):
        grammar_prefix_tree(toy_cache.compile(GrammarSource("grammar", 'root ::= "0"+')), vocab_size=V,
                            stop_token_ids=[EOS], max_tokens=8)


def test_exact_distributions_sum_to_one(toy_cache):
    _, _, target, gcd, log_z = exact_for(toy_cache, BITS3)
    assert math.isclose(sum(target.values()), 1.0, rel_tol=1e-9)
    assert math.isclose(sum(gcd.values()), 1.0, rel_tol=1e-9)
    assert log_z < 0
    assert kl_divergence(target, gcd) > 0.01  # the toy model distorts under GCD
    assert kl_divergence(target, target) == 0.0
    assert kl_divergence({"a": 1.0}, {"b": 1.0}) == math.inf


# ---------------------------------------------------------------------------------------------------------------
# trie math


@pytest.mark.parametrize("grammar", [BITS3, AB])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exhaustive_sampling_makes_efg_and_sampler_exact(toy_cache, grammar, seed):
    tree, logprobs, target, _, log_z = exact_for(toy_cache, grammar, seed)
    seqs = complete_sequences(tree, [EOS])
    random.Random(seed).shuffle(seqs)
    for w in seqs:
        run_request(toy_cache, grammar, w, seed)
    (key,) = core.STORE.keys()
    trie = core.STORE.get(key)
    assert trie.samples == len(seqs)
    assert math.isclose(math.log(trie.efg(())), log_z, rel_tol=1e-5)
    for prefix in tree:
        assert math.isclose(trie.log_efg(trie.find(prefix)), true_log_efg(tree, logprobs, prefix),
                            rel_tol=1e-5, abs_tol=1e-5)
    # Now every step samples the exact conditional P(v | p, grammar): check each prefix's row.
    for prefix, allowed in tree.items():
        out = list(prefix)
        proc = make(AsapProcessor, toy_cache, grammar, out)
        proc._n = len(out)  # noqa: SLF001 - jump to the prefix without replaying it
        proc.matcher = _matcher_at(toy_cache, grammar, prefix)
        proc.node = trie.find(prefix)
        q = torch.softmax(proc(toy_logits(prefix, seed)).double(), -1)
        denom = true_log_efg(tree, logprobs, prefix)
        for v in range(V):
            if v in allowed:
                child = prefix + (v,)
                num = float(logprobs[prefix][v]) + (0.0 if v == EOS else true_log_efg(tree, logprobs, child))
                assert math.isclose(float(q[v]), math.exp(num - denom), rel_tol=1e-4, abs_tol=1e-7)
            else:
                assert float(q[v]) == 0.0
    # The distribution of whole sequences under the converged sampler is the target.
    probs = {}
    for w in seqs:
        lp = 0.0
        for i in range(len(w)):
            node = trie.find(w[:i])
            lp += float(logprobs[w[:i]][w[i]])
            lp += (0.0 if w[i] == EOS else trie.log_efg(trie.find(w[: i + 1]))) - trie.log_efg(node)
        probs[w] = math.exp(lp)
    for w in seqs:
        assert math.isclose(probs[w], target[w], rel_tol=1e-4)


def _matcher_at(cache, grammar, prefix):
    import xgrammar as xgr

    m = xgr.GrammarMatcher(cache.compile(GrammarSource("grammar", grammar)), override_stop_tokens=[EOS])
    for t in prefix:
        assert m.accept_token(t)
    return m


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), order=st.randoms(use_true_random=False),
       cuts=st.lists(st.integers(0, 4), min_size=1, max_size=30))
def test_trie_is_always_a_sound_monotone_over_approximation(toy_cache, seed, order, cuts):
    """Any mix of complete and aborted requests: A(p) >= EFG(p) at every node, and A never increases."""
    core.STORE.clear()
    tree, logprobs, _, _, _ = exact_for(toy_cache, BITS3, seed)
    seqs = complete_sequences(tree, [EOS])
    exact = {p: true_log_efg(tree, logprobs, p) for p in tree}
    before: dict[tuple, float] = {}
    for cut in cuts:
        w = order.choice(seqs)
        run_request(toy_cache, BITS3, w[: max(1, len(w) - cut)], seed)  # cut > 0: aborted (or max_tokens) midway
        trie = core.STORE.get(core.STORE.keys()[0])
        for prefix, node in trie.iter_nodes():
            a = trie.log_efg(node)
            assert a >= exact[prefix] - 1e-5
            assert a <= before.get(prefix, 0.0) + 1e-6
            before[prefix] = a


def test_aborted_requests_then_exhaustive_still_exact(toy_cache):
    tree, logprobs, _, _, log_z = exact_for(toy_cache, BITS3, 5)
    seqs = complete_sequences(tree, [EOS])
    for w in seqs[:5]:
        run_request(toy_cache, BITS3, w[:1], 5)  # aborted after one token
    for w in seqs:
        run_request(toy_cache, BITS3, w, 5)
    trie = core.STORE.get(core.STORE.keys()[0])
    assert math.isclose(math.log(trie.efg()), log_z, rel_tol=1e-5)


def test_interleaved_requests_share_one_trie_consistently(toy_cache):
    """Requests decoding in lock-step (as rows of one batch) update one trie; the result is exact."""
    tree, logprobs, _, _, log_z = exact_for(toy_cache, BITS3, 3)
    seqs = complete_sequences(tree, [EOS])
    procs = []
    for w in seqs:
        out: list[int] = []
        procs.append((make(AsapProcessor, toy_cache, BITS3, out), out, w))
    for step in range(max(len(w) for w in seqs)):
        for proc, out, w in procs:
            if step < len(w):
                proc(toy_logits(out, 3))
                out.append(w[step])
    (key,) = core.STORE.keys()
    trie = core.STORE.get(key)
    assert math.isclose(math.log(trie.efg()), log_z, rel_tol=1e-5)
    for prefix in tree:
        assert math.isclose(trie.log_efg(trie.find(prefix)), true_log_efg(tree, logprobs, prefix), rel_tol=1e-5,
                            abs_tol=1e-5)
    # Visit counts: every prefix of every request (EOS never becomes a node), each request counted once.
    counts: dict[tuple, int] = {}
    for w in seqs:
        for i in range(len(w)):
            counts[w[:i]] = counts.get(w[:i], 0) + 1
    assert {p: n.visits for p, n in trie.iter_nodes()} == counts
    assert trie.root.visits == trie.samples == len(seqs)


def test_sampling_converges_to_the_grammar_conditioned_distribution(toy_cache):
    """Sample through the processor (temperature 1, torch multinomial): ASAp samples the target, GCD does not."""
    seed = 11
    _, _, target, gcd_exact, _ = exact_for(toy_cache, BITS3, seed)
    gen = torch.Generator().manual_seed(0)

    def sample(cls, n):
        outs = []
        for _ in range(n):
            out: list[int] = []
            proc = make(cls, toy_cache, BITS3, out, namespace="conv") if cls is AsapProcessor else \
                make(cls, toy_cache, BITS3, out)
            while not out or out[-1] != EOS:
                row = proc(toy_logits(out, seed))
                out.append(int(torch.multinomial(torch.softmax(row.double(), -1), 1, generator=gen)))
            outs.append(tuple(out))
        return outs

    asap = sample(AsapProcessor, 1500)
    gcd = sample(GcdProcessor, 1500)
    # After a burn-in of 500 samples ASAp passes a G-test against the exact target (0.01-nat tolerance, as in
    # test_asap_engine.py; measured G 0.3, 3 df); GCD passes it against its own exact distribution and fails it
    # against the target (negative control; measured G 4310).
    assert goodness_of_fit(asap[500:], target, tolerance=0.01).passes
    assert goodness_of_fit(gcd, gcd_exact).passes
    assert not goodness_of_fit(gcd[500:], target, tolerance=0.01).passes
    assert kl_divergence(target, gcd_exact) > 0


def tempered_ctx(cache, t):
    """The row context the router gives a request sampled at temperature ``t`` (``RowContext.sampling``)."""
    return SimpleNamespace(**vars(toy_ctx(cache)), sampling=SamplingSettings(temperature=t))


def test_temperature_from_the_router_makes_tempered_sampling_exact(toy_cache):
    t = 0.5
    tree, logprobs, target, _, log_z = exact_for(toy_cache, BITS3, 4, temperature=t)
    for w in complete_sequences(tree, [EOS]):
        run_request(toy_cache, BITS3, w, 4, **{})  # an untempered request does not share the tempered trie
    for w in complete_sequences(tree, [EOS]):
        out: list[int] = []
        proc = AsapProcessor(params(grammar=BITS3), [1, 2], out, tempered_ctx(toy_cache, t))
        for tok in w:
            proc(toy_logits(out, 4))
            out.append(tok)
    assert len(core.STORE) == 2
    trie = next(core.STORE.get(k) for k in core.STORE.keys() if core.STORE.get(k).meta["temperature"] == t)
    assert math.isclose(math.log(trie.efg()), log_z, rel_tol=1e-5)
    # vLLM divides the returned row by T: softmax(row / T) is the exact tempered conditional at the root.
    out = []
    proc = AsapProcessor(params(grammar=BITS3), [1, 2], out, tempered_ctx(toy_cache, t))
    q = torch.softmax(proc(toy_logits((), 4)).double() / t, -1)
    for v in tree[()]:
        num = float(logprobs[()][v]) + true_log_efg(tree, logprobs, (v,))
        assert math.isclose(float(q[v]), math.exp(num - log_z), rel_tol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# store: LRU budget, export / load


def test_lru_budget_evicts_least_recently_used_tries(toy_cache):
    seqs = complete_sequences(grammar_prefix_tree(toy_cache.compile(GrammarSource("grammar", BITS3)), vocab_size=V,
                                                  stop_token_ids=[EOS]), [EOS])
    for w in seqs[:2]:
        run_request(toy_cache, BITS3, w, namespace="probe")
    size = core.STORE.total_bytes  # one trie of two requests
    core.STORE.clear()
    core.configure(budget_bytes=2 * size + core.NODE_BYTES)  # room for two such tries, not three
    for ns in ("a", "b", "c"):
        for w in seqs[:2]:
            run_request(toy_cache, BITS3, w, namespace=ns)
    assert core.STORE.total_bytes <= core.STORE.budget_bytes
    assert core.STORE.total_bytes == sum(core.STORE.get(k).nbytes for k in core.STORE.keys())
    names = [core.STORE.get(k).meta["namespace"] for k in core.STORE.keys()]
    assert names[-1] == "c" and "a" not in names and core.STORE.evictions >= 1
    assert names == ["b", "c"]
    # Touching "b" makes it the most recent: "c" is evicted next.
    run_request(toy_cache, BITS3, seqs[0][:1], namespace="b")
    for w in seqs[:2]:
        run_request(toy_cache, BITS3, w, namespace="d")
    names = [core.STORE.get(k).meta["namespace"] for k in core.STORE.keys()]
    assert names == ["b", "d"]


def test_a_trie_alone_over_budget_stops_growing_but_keeps_masking(toy_cache):
    base = AsapTrie("k", {"grammar": BITS3, "prompt_ids": [1, 2]}).base_bytes  # what make()'s trie costs empty
    core.configure(budget_bytes=base + 3 * core.NODE_BYTES)
    tree, *_ = exact_for(toy_cache, BITS3)
    seqs = complete_sequences(tree, [EOS])
    for w in seqs:
        proc, rows = run_request(toy_cache, BITS3, w)
        for row, t in zip(rows, w):
            assert math.isfinite(float(row[t]))  # the sampled token was always allowed
    trie = core.STORE.get(core.STORE.keys()[0])
    assert trie.n_nodes == 3 and core.STORE.total_bytes <= core.STORE.budget_bytes


def test_node_bytes_is_a_fair_estimate(toy_cache):
    trie = AsapTrie("k")
    tracemalloc.start()
    start = tracemalloc.take_snapshot()
    node = trie.root
    for i in range(2000):  # a chain plus a sibling per level: dicts with entries on every inner node
        child = trie.add_child(node, 1 + i % 5, -1.5 - i * 1e-3, -0.25 - i * 1e-3)
        trie.add_child(node, 7, -2.5, -0.3)
        trie.visit(child, -0.5 - i * 1e-3)
        node = child
    used = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(start, "filename"))
    tracemalloc.stop()
    per_node = used / (trie.n_nodes - 1)
    assert per_node <= core.NODE_BYTES, per_node


def test_export_load_round_trip(toy_cache, tmp_path):
    tree, logprobs, _, _, _ = exact_for(toy_cache, BITS3, 8)
    seqs = complete_sequences(tree, [EOS])
    for w in seqs[::2]:
        run_request(toy_cache, BITS3, w, 8)
    run_request(toy_cache, BITS3, seqs[1][:2], 8)
    key = core.STORE.keys()[0]
    trie = core.STORE.get(key)
    path = tmp_path / f"{key}.json"
    trie.export(path)
    loaded = AsapTrie.load(path)
    assert loaded.key == trie.key and loaded.meta == trie.meta and loaded.samples == trie.samples
    assert loaded.n_nodes == trie.n_nodes
    got = dict(loaded.iter_nodes())
    for prefix, node in trie.iter_nodes():
        other = got[prefix]
        assert (other.logp, other.rest) == (node.logp, node.rest)
        assert loaded.log_efg(other) == pytest.approx(trie.log_efg(node), rel=1e-12, abs=1e-12)
    # A store with a preload folder picks the file up for the same key, and requests continue from it.
    core.STORE.clear()
    core.configure(preload_dir=tmp_path)
    try:
        for w in seqs[1::2]:
            run_request(toy_cache, BITS3, w, 8)
        resumed = core.STORE.get(key)
        assert resumed.samples == trie.samples + len(seqs[1::2])
        _, _, _, _, log_z = exact_for(toy_cache, BITS3, 8)
        assert math.isclose(math.log(resumed.efg()), log_z, rel_tol=1e-5)
    finally:
        core.configure(preload_dir="")
    with pytest.raises(ValueError, match="not an ASAp trie"):
        AsapTrie.from_dict({"format": "other"})


def test_store_put_get_remove():
    a, b = AsapTrie("a"), AsapTrie("b")
    one = core.TRIE_BYTES + core.NODE_BYTES  # an empty trie: its base charge and its root
    assert a.nbytes == one
    store = TrieStore(10 * one)
    store.put(a)
    store.put(b)
    assert store.keys() == ["a", "b"] and store.total_bytes == 2 * one == store.peak_bytes
    assert store.get("a") is a and store.keys() == ["b", "a"]
    store.remove("b")
    assert "b" not in store and store.total_bytes == one
    assert not store.may_grow(b)  # not in the store any more


def test_a_trie_bigger_than_the_budget_is_never_stored(toy_cache):
    core.configure(budget_bytes=core.TRIE_BYTES)  # less than any trie with a grammar and a prompt
    proc, rows = run_request(toy_cache, BITS3, [1, 1, 1, EOS])
    assert len(core.STORE) == 0 and core.STORE.total_bytes == 0 and core.STORE.peak_bytes == 0
    assert proc.trie is not None and proc.trie.n_nodes == 1  # read, never grown
    assert all(math.isfinite(float(r[t])) for r, t in zip(rows, [1, 1, 1, EOS]))


def test_store_stays_within_its_budget_under_1000_prompt_grammar_pairs(toy_cache):
    """Acceptance 3 of issue #5 at the core level: 1,000 distinct (prompt, grammar) pairs, two requests each, a
    budget far below what they would take. The charged bytes never exceed the budget (checked after every request)
    and the objects the store really holds (``TrieStore.measured_bytes``) stay under it too."""
    seqs = {g: complete_sequences(grammar_prefix_tree(toy_cache.compile(GrammarSource("grammar", g)), vocab_size=V,
                                                      stop_token_ids=[EOS]), [EOS]) for g in (BITS3, AB)}
    budget = 96 * 1024
    core.configure(budget_bytes=budget)
    rng = random.Random(0)
    unbounded = real_peak = 0
    evictions = core.STORE.evictions
    for i in range(500):
        for g in (BITS3, AB):
            for _ in range(2):
                run_request(toy_cache, g, rng.choice(seqs[g]), prompt=(1000 + i, 2000 + i, 3000))
                assert core.STORE.total_bytes <= budget
            unbounded += core.STORE.get(core.STORE.keys()[-1]).nbytes
        if i % 50 == 49:
            real_peak = max(real_peak, core.STORE.measured_bytes())
    stats = core.store_stats()
    print(f"\n1000 pairs: {stats}; without a budget {unbounded} B; real size (peak of samples) {real_peak} B")
    assert unbounded > 10 * budget  # the budget really binds
    assert stats["peak_bytes"] <= budget and stats["bytes"] <= budget
    assert stats["evictions"] - evictions == 1000 - stats["tries"]
    assert stats["bytes"] == sum(core.STORE.get(k).nbytes for k in core.STORE.keys())
    assert real_peak <= budget, (real_peak, stats)


def test_fast_rest_mass_matches_the_exact_logsumexp():
    """``_Step.rest`` (float32 probabilities summed in float64, exclusions subtracted or re-summed) against a float64
    logsumexp, on rows that exercise every path: small and large exclusions, allowed mass near float32 underflow,
    a forced token, and a NaN row."""
    gen = torch.Generator().manual_seed(3)
    n = 8192

    def exact(x, allowed, excl):
        lp = torch.log_softmax(x.double(), -1).masked_fill(~allowed, NEG)
        if excl:
            lp[list(excl)] = NEG
        return float(torch.logsumexp(lp, -1))

    cases = []
    x = torch.randn(n, generator=gen) * 3
    allowed = torch.rand(n, generator=gen) < 0.4
    idx = allowed.nonzero().flatten().tolist()
    cases.append((x, allowed, [[], idx[:3], idx[:40]]))
    peaked = x.clone()
    peaked[idx[5]] = 40.0  # one allowed token holds almost all the mass: removing it re-sums, no cancellation
    cases.append((peaked, allowed, [[], [idx[5]], [idx[5], idx[6]]]))
    far = x.clone()
    far[allowed] -= 120.0  # every allowed token below float32's smallest normal probability: the exact path
    cases.append((far, allowed, [[], idx[:2]]))
    forced = torch.zeros(n, dtype=torch.bool)
    forced[17] = True
    cases.append((x, forced, [[], [17]]))
    for x, allowed, exclusions in cases:
        step = core._Step(x.float().clone(), allowed)
        for excl in exclusions:
            got, want = step.rest(excl), exact(x, allowed, excl)
            if want == NEG:
                assert got == NEG
            else:
                assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (got, want)
        for t in allowed.nonzero().flatten().tolist()[:3]:
            want = float(torch.log_softmax(x.double(), -1)[t])
            assert core._Step(x.float().clone(), allowed).token_logp(t) == pytest.approx(want, rel=1e-6, abs=1e-6)
    bad = torch.full((n,), float("nan"))
    assert math.isnan(core._Step(bad, allowed).rest([]))


def test_a_nan_row_never_reaches_the_trie(toy_cache):
    out: list[int] = []
    proc = make(AsapProcessor, toy_cache, BITS3, out)
    row = proc(torch.full((V,), float("nan")))
    assert proc.node is None and proc.trie.n_nodes == 1 and proc.trie.root.rest is None  # detached, nothing written
    assert row.shape == (V,)


# ---------------------------------------------------------------------------------------------------------------
# parameters and admission validation


def test_exactly_one_grammar_parameter_and_syntax_errors_name_the_parameter(toy_cache):
    with pytest.raises(ValueError, match=r"declab\.grammar: give exactly one"):
        validate_request(params())
    with pytest.raises(ValueError, match=r"declab\.regex: give exactly one.*got grammar, regex"):
        validate_request(params(grammar=BITS3, regex="0+"))
    with pytest.raises(ValueError, match=r"declab\.grammar: EBNF parser error.*not defined"):
        validate_request(params(grammar="root ::= foo"))
    with pytest.raises(ValueError, match=r"declab\.json_schema: .*JSON"):
        gcd_validate(params(GCD_SPEC, json_schema="{not json"))
    with pytest.raises(ValueError, match=r"declab\.regex: Regex parsing error"):
        validate_request(params(regex="a(b"))
    validate_request(params(grammar=BITS3))
    validate_request(params(json_schema='{"type": "integer"}'))
    validate_request(params(regex="[01]{3}"))
    # The processors raise the same errors (the worker never sees them once admission validates).
    for cls in (AsapProcessor, GcdProcessor):
        with pytest.raises(ValueError, match=r"declab\.grammar"):
            make(cls, toy_cache, "root ::= (", [])
    with pytest.raises(ValueError, match=r"declab\.json_schema"):
        GcdProcessor(params(GCD_SPEC, json_schema="[1"), [], [], toy_ctx(toy_cache))


def test_specs():
    assert SPEC.name == "asap" and SPEC.paper == 65 and SPEC.status == "working" and SPEC.reason
    assert GCD_SPEC.name == "gcd" and GCD_SPEC.baseline_of == "asap"
    assert SPEC.load_row_processor() is AsapProcessor and GCD_SPEC.load_row_processor() is GcdProcessor
    assert {p.name for p in GCD_SPEC.params} == {"grammar", "json_schema", "regex"}
    with pytest.raises(ValueError, match=r"declab\.bogus"):
        resolve_params(SPEC.params, {"grammar": BITS3, "bogus": 1})


# ---------------------------------------------------------------------------------------------------------------
# GCD mask on the real decoder-29m tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer(shared_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_model)


class _FakeRouter:
    """What the router gives a processor today: ``ctx.tokenize`` bound to an object holding ``_tokenizer``."""

    def __init__(self, tok):
        self._tokenizer = tok

    def _tokenize(self, text):
        return list(self._tokenizer.encode(text, add_special_tokens=False))


@pytest.fixture(scope="module")
def real_ctx(hf_tokenizer):
    router = _FakeRouter(hf_tokenizer)
    return RowContext(vocab_size=8192, eos_token_id=hf_tokenizer.eos_token_id, tokenize=router._tokenize)


def _token_bytes(tok, vocab_size):
    from xgrammar import TokenizerInfo

    info = TokenizerInfo.from_huggingface(tok, vocab_size=vocab_size)
    return [b if isinstance(b, bytes) else b.encode() for b in info.decoded_vocab]


def _language_prefix_ok(language, text):
    return any(s.startswith(text) for s in language)


@pytest.mark.parametrize(
    "grammar,language",
    [
        (BITS3.replace("root", "root"), [f"{i:03b}" for i in range(8)]),
        ('root ::= " the" (" cat" | " cats" | " dog") "."', [" the cat.", " the cats.", " the dog."]),
    ],
)
def test_gcd_mask_is_exactly_the_grammatical_continuations(hf_tokenizer, real_ctx, grammar, language):
    vocab = _token_bytes(hf_tokenizer, 8192)
    eos = hf_tokenizer.eos_token_id
    rng = random.Random(0)
    for _ in range(12):  # random grammatical paths, checking the mask at every step
        out: list[int] = []
        proc = GcdProcessor(params(GCD_SPEC, grammar=grammar), [5, 6], out, real_ctx)
        text = b""
        while True:
            row = proc(torch.zeros(8192))
            allowed = set(torch.isfinite(row).nonzero().flatten().tolist())
            expect = {i for i, b in enumerate(vocab) if b and i != eos
                      and _language_prefix_ok([s.encode() for s in language], text + b)}
            if text.decode() in language:
                expect.add(eos)
            assert allowed == expect, (text, sorted(allowed ^ expect)[:10])
            t = rng.choice(sorted(allowed))
            out.append(t)
            if t == eos:
                break
            text += vocab[t]
        assert text.decode() in language


def test_gcd_forces_eos_when_the_grammar_is_complete_and_after_a_rejected_token(hf_tokenizer, real_ctx):
    eos = hf_tokenizer.eos_token_id
    ids = hf_tokenizer.encode("101", add_special_tokens=False)
    out: list[int] = []
    proc = GcdProcessor(params(GCD_SPEC, grammar=BITS3), [], out, real_ctx)
    for t in ids:
        proc(torch.zeros(8192))
        out.append(t)
    row = proc(torch.randn(8192))
    assert torch.isfinite(row).nonzero().flatten().tolist() == [eos]
    # A token the grammar rejects (e.g. produced despite the mask): the processor forces EOS from then on.
    out2: list[int] = []
    proc2 = GcdProcessor(params(GCD_SPEC, grammar=BITS3), [], out2, real_ctx)
    proc2(torch.zeros(8192))
    out2.extend(hf_tokenizer.encode(" hello", add_special_tokens=False))
    row = proc2(torch.zeros(8192))
    assert proc2.dead and torch.isfinite(row).nonzero().flatten().tolist() == [eos]


def test_gcd_never_returns_an_all_minus_inf_row(toy_cache):
    out: list[int] = []
    proc = make(GcdProcessor, toy_cache, BITS3, out)
    row = torch.full((V,), NEG)
    row[9] = 1.0  # only a token the grammar forbids has a finite logit
    got = proc(row)
    assert torch.isfinite(got).any()
    assert set(torch.isfinite(got).nonzero().flatten().tolist()) == {1, 2, 3, 4, 5, 6, 7, 8}


def test_json_schema_and_regex_grammars_on_the_real_tokenizer(hf_tokenizer, real_ctx):
    eos = hf_tokenizer.eos_token_id
    vocab = _token_bytes(hf_tokenizer, 8192)
    for kw, check in (
        ({"regex": "(yes|no)!"}, lambda s: s in ("yes!", "no!")),
        ({"json_schema": '{"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"], '
                         '"additionalProperties": false}'},
         lambda s: __import__("json").loads(s) in ({"a": True}, {"a": False})),
    ):
        rng = random.Random(1)
        for _ in range(5):
            out: list[int] = []
            proc = AsapProcessor(params(**kw), [7], out, real_ctx)
            text = b""
            for _ in range(60):
                row = proc(torch.randn(8192))
                allowed = torch.isfinite(row).nonzero().flatten().tolist()
                # prefer short tokens/EOS so the walk ends within the step budget
                t = eos if eos in allowed else min(allowed, key=lambda i: (len(vocab[i]) if vocab[i] else 99,
                                                                           rng.random()))
                if rng.random() < 0.3 and len(allowed) > 1 and eos not in allowed:
                    t = rng.choice(allowed)
                out.append(t)
                if t == eos:
                    break
                text += vocab[t]
            assert out[-1] == eos and check(text.decode()), text


def test_grammar_cache_compiles_once_per_text(toy_cache):
    src = GrammarSource("grammar", BITS3)
    assert toy_cache.compile(src) is toy_cache.compile(src)
    assert GrammarSource("grammar", BITS3).key != GrammarSource("regex", BITS3).key


def test_every_stop_token_of_the_context_ends_a_sentence(toy_cache):
    """With several EOS ids (``ctx.stop_token_ids``), each may end a complete sentence and none becomes a node."""
    stops = [EOS, 12]
    ctx = SimpleNamespace(vocab_size=V, eos_token_id=EOS, stop_token_ids=stops, tokenize=None, grammar_cache=toy_cache)
    compiled = toy_cache.compile(GrammarSource("grammar", BITS3))
    tree = grammar_prefix_tree(compiled, vocab_size=V, stop_token_ids=stops)
    assert all(12 in allowed for p, allowed in tree.items() if len(p) == 1 and p[0] == 7)
    logprobs = {p: torch.log_softmax(toy_logits(p, 6).double(), -1) for p in tree}
    _, _, log_z = exact_distributions(tree, logprobs, stops)
    seqs = complete_sequences(tree, stops)
    assert {w[-1] for w in seqs} == set(stops)
    for w in seqs:
        out: list[int] = []
        proc = AsapProcessor(params(grammar=BITS3), [1, 2], out, ctx)
        for t in w:
            proc(toy_logits(out, 6))
            out.append(t)
    trie = core.STORE.get(core.STORE.keys()[0])
    assert math.isclose(math.log(trie.efg()), log_z, rel_tol=1e-5)
    assert all(p[-1] not in stops for p, _ in trie.iter_nodes() if p)
