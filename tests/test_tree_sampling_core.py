"""Tree and multi-draft verification at temperature > 0 (``declab.integrations.sdk.tree_sampling``), pure core.

Every random choice of the walk goes through ``PositionDraws`` (``accept(prob)``, ``sample(logits)``), so its exact
output law can be computed by enumerating every choice sequence with its probability. For small vocabularies and
trees, averaged over the drafts (enumerated with their draft probabilities), the committed tokens completed by
plain sampling from the target must have exactly the target's joint law at every depth; deliberately broken rules
(accepting the target's argmax, forgetting the without-replacement update of ``q``, SpecTr with ``rho = 1``) must
not. The naive reference (``reference_verify_tree``) passes the same check.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from declab.integrations.sdk.tree_sampling import (KSequentialRule, PointMassRule, RecursiveRule, TorchDraws,
                                                  reference_verify_tree, spectr_rho, verify_tree)
from declab.integrations.sdk.trees import DraftTree, longest_accepted_path

V = 3


class Chooser:
    """Replays a script of option indices; new choice points take option 0 and are recorded for enumeration."""

    def __init__(self, script: list[int]):
        self.script = script
        self.made: list[tuple[int, int]] = []  # (number of options, chosen index)
        self.weight = 1.0

    def choose(self, options: list[tuple[object, float]]):
        options = [(v, w) for v, w in options if w > 0]
        i = self.script[len(self.made)] if len(self.made) < len(self.script) else 0
        self.made.append((len(options), i))
        self.weight *= options[i][1]
        return options[i][0]


class EnumDraws:
    def __init__(self, chooser: Chooser):
        self.chooser = chooser

    def accept(self, probability: float) -> bool:
        return self.chooser.choose([(True, probability), (False, 1.0 - probability)])

    def sample(self, logits: torch.Tensor) -> int:
        probs = torch.softmax(logits.double(), dim=-1).tolist()
        return self.chooser.choose(list(enumerate(probs)))

    def sample_list(self, probs: list[float]) -> int:
        return self.chooser.choose(list(enumerate(probs)))


def enumerate_runs(fn):
    """``fn(chooser)`` over every choice sequence: list of (probability, result)."""
    out, stack = [], [[]]
    while stack:
        script = stack.pop()
        chooser = Chooser(script)
        result = fn(chooser)
        out.append((chooser.weight, result))
        for depth in range(len(script), len(chooser.made)):
            n, _ = chooser.made[depth]
            prefix = [i for _, i in chooser.made[:depth]]
            stack.extend(prefix + [alt] for alt in range(1, n))
    assert abs(sum(w for w, _ in out) - 1.0) < 1e-9
    return out


class Model:
    """Random next-token distributions for every prefix (a dict filled on demand), with some zeros."""

    def __init__(self, seed: int, sparse: bool = False):
        self.rng = random.Random(seed)
        self.sparse = sparse
        self.table: dict[tuple[int, ...], list[float]] = {}

    def __call__(self, prefix: tuple[int, ...]) -> list[float]:
        if prefix not in self.table:
            w = [self.rng.random() ** 2 for _ in range(V)]
            if self.sparse:
                w[self.rng.randrange(V)] = 0.0
            total = sum(w)
            self.table[prefix] = [x / total for x in w]
        return self.table[prefix]


def depths(parents):
    d = []
    for i, p in enumerate(parents):
        d.append(0 if p < 0 else d[p] + 1)
    return d


def prefixes(tokens, parents):
    """Tokens from the root's first child down to each node (the root's prefix is empty)."""
    out = []
    for i, p in enumerate(parents):
        out.append(() if p < 0 else out[p] + (tokens[i],))
    return out


def draft_configurations(parents, q: Model, drawn: str):
    """Every token assignment of the draft nodes with its probability under the drafting."""
    n = len(parents)
    kids = {}
    for i in range(1, n):
        kids.setdefault(parents[i], []).append(i)
    configs = []
    for assignment in itertools.product(range(V), repeat=n - 1):
        tokens = [0, *assignment]
        pre = prefixes(tokens, parents)
        w = 1.0
        for parent, children in kids.items():
            dist = q(pre[parent])
            if drawn == "with_replacement":
                for c in children:
                    w *= dist[tokens[c]]
            else:  # without replacement: each sibling from what the earlier ones left
                left = 1.0
                seen = set()
                for c in children:
                    t = tokens[c]
                    if t in seen or left <= 0:
                        w = 0.0
                        break
                    w *= dist[t] / left
                    left -= dist[t]
                    seen.add(t)
        if w > 0:
            configs.append((w, tokens))
    return configs


def make_tree(tokens, parents, q: Model | None, drawn: str, rule: str = "recursive") -> DraftTree:
    if drawn == "deterministic":
        return DraftTree(tokens, tuple(parents))
    pre = prefixes(tokens, parents)
    rows = torch.tensor([[1.0 / V] * V] + [q(pre[parents[i]]) for i in range(1, len(parents))], dtype=torch.float64)
    return DraftTree(tokens, tuple(parents), draft_probs=rows, children_drawn=drawn, rule=rule)


def exact_joint(p: Model, q: Model | None, parents, drawn: str, *, rule: str = "recursive", tokens=None,
                verifier=None, reference: bool = False) -> dict[tuple[int, ...], float]:
    """Law of the first ``depth + 1`` tokens: one verification step, then plain sampling from ``p``."""
    length = max(depths(parents)) + 1
    configs = [(1.0, tokens)] if drawn == "deterministic" else draft_configurations(parents, q, drawn)
    joint: dict[tuple[int, ...], float] = {}
    for w_draft, toks in configs:
        tree = make_tree(toks, parents, q, drawn, rule)
        pre = prefixes(toks, parents)

        def run(chooser):
            draws = EnumDraws(chooser)
            if reference:
                return reference_verify_tree(tree, lambda node: p(pre[node]), draws.accept, draws.sample_list)[1]
            return verify_tree(tree, lambda node: torch.tensor(p(pre[node]), dtype=torch.float64).log(),
                               lambda depth: draws, rule=verifier)[1]

        for w_run, committed in enumerate_runs(run):
            for rest in itertools.product(range(V), repeat=length - len(committed)):
                seq = tuple(committed) + rest
                w = w_draft * w_run
                for j in range(len(committed), length):
                    w *= p(seq[:j])[seq[j]]
                joint[seq] = joint.get(seq, 0.0) + w
    return joint


def target_joint(p: Model, length: int) -> dict[tuple[int, ...], float]:
    out = {}
    for seq in itertools.product(range(V), repeat=length):
        out[seq] = math.prod(p(seq[:j])[seq[j]] for j in range(length))
    return out


def distance(joint, target) -> float:
    return max(abs(joint.get(s, 0.0) - target[s]) for s in target)


TREES = {
    "wide": (-1, 0, 0, 0, 1, 2),  # three children at the root, one or two levels
    "deep": (-1, 0, 0, 1, 1, 3),  # depth 3
}


@pytest.mark.parametrize("shape", list(TREES))
@pytest.mark.parametrize("drawn", ["with_replacement", "without_replacement"])
@pytest.mark.parametrize("seed", [0, 1])
def test_recursive_rejection_sampling_gives_the_target_law_at_every_depth(shape, drawn, seed):
    parents = TREES[shape]
    p, q = Model(seed, sparse=seed == 1), Model(100 + seed)
    target = target_joint(p, max(depths(parents)) + 1)
    assert distance(exact_joint(p, q, parents, drawn), target) < 1e-9
    assert distance(exact_joint(p, q, parents, drawn, reference=True), target) < 1e-9


@pytest.mark.parametrize("shape", list(TREES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deterministic_children_give_the_target_law(shape, seed):
    parents = TREES[shape]
    rng = random.Random(seed)
    tokens = [0] + [rng.randrange(V) for _ in parents[1:]]  # repeated sibling tokens allowed
    p = Model(seed, sparse=seed == 2)
    target = target_joint(p, max(depths(parents)) + 1)
    assert distance(exact_joint(p, None, parents, "deterministic", tokens=tokens), target) < 1e-9
    assert distance(exact_joint(p, None, parents, "deterministic", tokens=tokens, reference=True), target) < 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectr_k_sequential_gives_the_target_law(seed):
    parents = (-1, 0, 0, 0, 1, 1)  # k = 3 at the root, k = 2 below the first draft
    p, q = Model(seed, sparse=seed == 2), Model(200 + seed)
    target = target_joint(p, 3)
    assert distance(exact_joint(p, q, parents, "with_replacement", rule="k_sequential"), target) < 1e-9
    assert distance(exact_joint(p, q, parents, "with_replacement", rule="k_sequential", reference=True),
                    target) < 1e-9


def test_spectr_accepts_more_than_recursive_sampling_of_the_same_drafts_or_as_much():
    """k-sequential's acceptance ``1 - (1 - beta(rho))^k`` is at least plain speculative sampling's for one draft."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = torch.rand(20, generator=gen, dtype=torch.float64) ** 3
        q = torch.rand(20, generator=gen, dtype=torch.float64) ** 3
        p, q = p / p.sum(), q / q.sum()
        for k in (1, 2, 4):
            rho, beta = spectr_rho(p, q, k)
            assert 1.0 <= rho <= k
            residual = p - torch.minimum(q, p / rho) * (1 - (1 - beta) ** k) / beta
            assert float(residual.min()) > -1e-12  # a distribution (up to rounding)
            assert 1 - (1 - beta) ** k >= float(torch.minimum(p, q).sum()) - 1e-12


class ArgmaxBiased(PointMassRule):
    """Broken: accepts the child that is the target's argmax outright."""

    def choose(self, logits, children, tokens, q_rows, draws):
        top = int(torch.argmax(logits))
        hit = next((c for c in children if tokens[c] == top), None)
        return (hit, top) if hit is not None else super().choose(logits, children, tokens, q_rows, draws)


class RhoOne(KSequentialRule):
    """Broken: SpecTr with rho = 1 whatever k (the residual is clipped where it goes negative)."""

    def choose(self, logits, children, tokens, q_rows, draws):
        import declab.integrations.sdk.tree_sampling as ts

        original = ts.spectr_rho
        ts.spectr_rho = lambda p, q, k: (1.0, float(torch.minimum(q, p).sum()))
        try:
            return super().choose(logits, children, tokens, q_rows, draws)
        finally:
            ts.spectr_rho = original


@pytest.mark.parametrize("case", ["argmax", "no_q_update", "rho_one"])
def test_broken_rules_fail_the_same_check(case):
    parents = (-1, 0, 0, 0, 1, 2)
    p, q = Model(3), Model(103)
    target = target_joint(p, 3)
    if case == "argmax":
        joint = exact_joint(p, None, parents, "deterministic", tokens=[0, 0, 1, 2, 1, 0], verifier=ArgmaxBiased())
    elif case == "no_q_update":  # drafts drawn without replacement, verified as if with replacement
        parents, p, q = (-1, 0, 0, 1, 1), Model(0), Model(100)  # two of three tokens drawn at the root
        target = target_joint(p, 3)
        joint = exact_joint(p, q, parents, "without_replacement", verifier=RecursiveRule(update_q=False))
    else:
        joint = exact_joint(p, q, parents, "with_replacement", rule="k_sequential", verifier=RhoOne())
    assert distance(joint, target) > 1e-3


@pytest.mark.parametrize("drawn,rule", [("deterministic", "recursive"), ("with_replacement", "recursive"),
                                        ("without_replacement", "recursive"), ("with_replacement", "k_sequential")])
def test_greedy_is_the_special_case(drawn, rule):
    """With the target a point mass at its argmax, every rule accepts what greedy tree verification accepts."""
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    vocab = 12
    for _ in range(30):
        parents = [-1]
        for i in range(1, 15):
            parents.append(rng.randrange(i))
        kids = {}
        for i in range(1, 15):
            kids.setdefault(parents[i], []).append(i)
        tokens = [0] * 15
        for children in kids.values():  # distinct sibling tokens
            for c, t in zip(children, rng.sample(range(vocab), len(children))):
                tokens[c] = t
        argmax = [rng.randrange(vocab) if rng.random() < 0.5 else tokens[(kids.get(i) or [0])[0]] for i in range(15)]
        probs = None if drawn == "deterministic" else torch.softmax(torch.randn(15, vocab, generator=gen), -1)
        tree = DraftTree(tokens, tuple(parents), draft_probs=probs, children_drawn=drawn, rule=rule)

        def logits(node):
            row = torch.full((vocab,), float("-inf"))
            row[argmax[node]] = 0.0
            return row

        path, out = verify_tree(tree, logits, lambda d: TorchDraws(gen))
        expected = longest_accepted_path(tokens, parents, argmax)
        assert path == expected
        assert out == [tokens[i] for i in path[1:]] + [argmax[path[-1]]]


def test_deterministic_trees_commit_what_plain_sampling_draws_with_the_same_position_draws():
    """Point-mass verification draws one token per position: with per-position seeds, any tree commits a prefix of
    the sequence plain sampling draws with the same seeds (what makes seeded requests independent of the drafts)."""
    vocab = 6
    p = {}
    gen = torch.Generator().manual_seed(1)

    def dist(prefix):
        if prefix not in p:
            p[prefix] = torch.randn(vocab, generator=gen)
        return p[prefix]

    def draws(depth):
        return TorchDraws(torch.Generator().manual_seed(1000 + depth))

    plain, prefix = [], ()
    for depth in range(5):
        plain.append(draws(depth).sample(dist(prefix)))
        prefix += (plain[-1],)
    rng = random.Random(0)
    for _ in range(40):
        parents = [-1] + [rng.randrange(i) for i in range(1, 12)]
        tokens = [0] + [rng.randrange(vocab) for _ in range(11)]
        pre = prefixes(tokens, parents)
        _, out = verify_tree(DraftTree(tokens, tuple(parents)), lambda node: dist(pre[node]), draws)
        assert out == plain[: len(out)]


def test_bad_combinations_are_refused():
    probs = torch.full((3, V), 1.0 / V)
    with pytest.raises(ValueError, match="k_sequential"):
        verify_tree(DraftTree([0, 1, 2], (-1, 0, 0), draft_probs=probs, children_drawn="without_replacement",
                              rule="k_sequential"), lambda n: torch.zeros(V), lambda d: TorchDraws())


def _sampling_metadata(temperature, top_k, top_p, generators):
    from vllm.v1.sample.logits_processor.state import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    b = temperature.shape[0]
    return SamplingMetadata(
        temperature=temperature, all_greedy=False, all_random=True, top_p=top_p, top_k=top_k, generators=generators,
        max_num_logprobs=None, no_penalties=True, prompt_token_ids=None, frequency_penalties=torch.zeros(b),
        presence_penalties=torch.zeros(b), repetition_penalties=torch.ones(b), output_token_ids=[[] for _ in range(b)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors())


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, None, 0.9), (0.8, 20, None),
                                                     (1.3, 50, 0.8)])
def test_engine_draws_sample_what_vllms_sampler_samples_with_the_same_generator(temperature, top_k, top_p):
    """The sampling verifier's target token at a position (``processed_logits`` + ``EngineDraws``) is the token
    vLLM's own CPU sampler draws from the same logits with the same seeded generator, and both advance the
    generator alike: seeded tree rows draw what plain seeded decoding draws."""
    from vllm.v1.sample.sampler import Sampler

    from declab.integrations.sdk.tree_verification import EngineDraws, processed_logits

    vocab, rows = 500, 3
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(3)) * 3
    temp = torch.full((rows,), temperature)
    k = None if top_k is None else torch.full((rows,), top_k, dtype=torch.int32)
    p = None if top_p is None else torch.full((rows,), top_p)
    sampler = Sampler()
    for seed in range(20):
        gens = {i: torch.Generator().manual_seed(seed * 10 + i) for i in range(rows)}
        mine = {i: torch.Generator().manual_seed(seed * 10 + i) for i in range(rows)}
        expected = sampler(logits.clone(), _sampling_metadata(temp, k, p, gens)).sampled_token_ids[:, 0].tolist()
        got = [EngineDraws(mine[i]).sample(processed_logits(logits[i : i + 1], temp[i : i + 1],
                                                            None if k is None else k[i : i + 1],
                                                            None if p is None else p[i : i + 1])[0])
               for i in range(rows)]
        assert got == expected
        assert all(torch.equal(gens[i].get_state(), mine[i].get_state()) for i in range(rows))
