"""Contrastive search's pure pieces (``plugins/contrastive_search``): the scoring step, the per-request context
store, and what admission refuses (no engine)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from declab.integrations.sdk.params import resolve_params
from declab.plugins.contrastive_search.admission import check_request
from declab.plugins.contrastive_search.core import Candidates, ContextStates, candidates, choose
from declab.plugins.contrastive_search.spec import PROPOSER_PATH, SPEC

pytestmark = pytest.mark.core


def test_candidates_are_the_top_k_of_the_softmax():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0])
    c = candidates(logits, 3)
    assert c.token_ids == [1, 3, 2]
    assert torch.allclose(c.probs, torch.softmax(logits, -1)[[1, 3, 2]])


def test_choose_is_the_formula():
    gen = torch.Generator().manual_seed(0)
    context = F.normalize(torch.randn(7, 16, generator=gen), dim=-1)
    hidden = torch.randn(4, 16, generator=gen)
    cands = Candidates([10, 11, 12, 13], torch.tensor([0.4, 0.3, 0.2, 0.1]))
    for alpha in (0.0, 0.3, 0.6, 1.0):
        cos = torch.tensor([max(float(F.cosine_similarity(h, c, dim=0)) for c in context) for h in hidden.unbind()])
        want = int(((1 - alpha) * cands.probs - alpha * cos).argmax())
        assert choose(cands, hidden, context, alpha) == want
    assert choose(cands, hidden, context, 0.0) == 0  # alpha 0: the most probable (greedy)


def test_ties_go_to_the_more_probable_candidate():
    context = torch.tensor([[1.0, 0.0]])
    same = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert choose(Candidates([5, 6], torch.tensor([0.5, 0.5])), same, context, 0.6) == 0


def test_context_states_keep_the_first_state_of_each_position():
    store = ContextStates(hidden_size=2, capacity=2)
    store.put(0, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    store.put(1, torch.tensor([[1.0, 1.0], [0.0, -1.0], [1.0, 0.0]]))  # position 1 known: kept; grows past capacity
    assert store.length == 4
    assert torch.allclose(store.view(4), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="gap"):
        store.put(6, torch.zeros(1, 2))


def _params(**kw):
    base = dict(temperature=0.0, n=1, logprobs=None, presence_penalty=0.0, frequency_penalty=0.0,
                repetition_penalty=1.0, min_tokens=0, logit_bias=None, allowed_token_ids=None, bad_words=None,
                prompt_logprobs=None, structured_outputs=None, skip_reading_prefix_cache=None)
    return SimpleNamespace(**{**base, **kw})


ENGINE = SimpleNamespace(speculative_config=SimpleNamespace(model=PROPOSER_PATH, num_speculative_tokens=8))


@pytest.mark.parametrize("options, named", [
    ({"temperature": 0.8}, "temperature"), ({"n": 2}, "n must be 1"), ({"logprobs": 0}, "logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"min_tokens": 3}, "min_tokens"),
    ({"structured_outputs": object()}, "structured_outputs"), ({"prompt_logprobs": 1}, "prompt_logprobs"),
])
def test_refuses_what_it_cannot_honour(options, named):
    with pytest.raises(ValueError, match=named):
        check_request(_params(**options), {"top_k": 4, "alpha": 0.6}, ENGINE)


def test_refuses_an_engine_without_its_proposer_and_top_k_beyond_the_engine():
    with pytest.raises(ValueError, match="speculative proposer"):
        check_request(_params(), {"top_k": 4, "alpha": 0.6}, None)
    with pytest.raises(ValueError, match="declab.top_k must be <= 8"):
        check_request(_params(), {"top_k": 9, "alpha": 0.6}, ENGINE)


def test_accepted_requests_skip_reading_the_prefix_cache():
    params = _params()
    check_request(params, {"top_k": 4, "alpha": 0.6}, ENGINE)
    assert params.skip_reading_prefix_cache is True  # every prompt position's hidden state is needed


@pytest.mark.parametrize("given, named", [
    ({"top_k": 0}, "declab.top_k"), ({"top_k": 2.5}, "declab.top_k"), ({"top_k": True}, "declab.top_k"),
    ({"alpha": 1.01}, "declab.alpha"), ({"alpha": -0.5}, "declab.alpha"), ({"alpha": float("nan")}, "declab.alpha"),
    ({"k": 4}, "declab.k"),
])
def test_parameters_are_validated(given, named):
    with pytest.raises(ValueError, match=named):
        resolve_params(SPEC.params, given)
