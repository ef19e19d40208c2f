"""The SDK's proposer base class (``DeclabProposer``) and the tree-verification seam's listeners, with a fake runner.

The base class is exercised through a real engine by Token Recycling (``test_token_recycling_engine.py``); these pin
its bookkeeping: request start/finish derived from the runner, chains and trees turned into vLLM's draft lists, the
parents the tree seam reads back, and the order of verifiers.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from declab.integrations.sdk import PluginSpec, runtime
from declab.integrations.sdk.proposer import DeclabProposer, DraftTree, TargetStep
from declab.integrations.sdk.tree_verification import (SEAM, GreedyTreeVerifier, SamplingTreeVerifier, TreeRequest,
                                                         TreeVerifier)

SPEC = PluginSpec(name="fake_proposer", paper=0, status="working", summary="a proposer for tests")


class RecordingProposer(DeclabProposer):
    """Drafts a 2-node tree for rows whose request id starts with "t", else the chain [7]; records the events."""

    spec = SPEC
    selected_as = "a fake proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.events: list[tuple[str, ...]] = []

    def on_request_start(self, req_id, params):
        self.events.append(("start", req_id, params.temperature))

    def on_request_finish(self, req_id):
        self.events.append(("finish", req_id))

    def on_step(self, step):
        self.events.append(("step", *step.req_ids))

    def draft(self, step):
        return [DraftTree([1, 2, 3], (-1, 0, 0)) if r.startswith("t") else [7] for r in step.req_ids]


@pytest.fixture
def proposer(monkeypatch):
    monkeypatch.setattr(runtime, "selected_plugins", lambda: (SPEC.name,))
    config = SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=3), additional_config=None)
    return RecordingProposer(config)


def _runner(known: dict[str, float]):
    """A runner whose ``requests`` holds ``known`` (req_id -> temperature)."""
    return SimpleNamespace(requests={r: SimpleNamespace(sampling_params=SimpleNamespace(temperature=t))
                                     for r, t in known.items()})


def _step(runner, batch: list[str]) -> TargetStep:
    rows = len(batch)
    return TargetStep(runner=runner, req_ids=batch, sampled_token_ids=[[1]] * rows, verified_drafts=[[]] * rows,
                      logits=torch.zeros(rows, 4), hidden_states=None,
                      num_tokens_no_spec=np.ones(rows, dtype=np.int32), token_ids_cpu=np.zeros((rows, 8), np.int32))


def _propose(proposer, step):
    proposer.feed(step)
    return proposer.propose(step.sampled_token_ids, step.num_tokens_no_spec, step.token_ids_cpu)


def test_requests_start_once_and_finish_when_the_runner_forgets_them(proposer):
    runner = _runner({"a": 0.0, "tb": 1.0})
    _propose(proposer, _step(runner, ["a", "tb"]))
    assert proposer.events == [("start", "a", 0.0), ("start", "tb", 1.0), ("step", "a", "tb")]
    assert proposer.runner is runner and set(proposer.request_params) == {"a", "tb"}

    # "a" is not scheduled this step (preempted or waiting) but still known: neither finished nor restarted.
    proposer.events.clear()
    runner.requests["c"] = SimpleNamespace(sampling_params=SimpleNamespace(temperature=0.5))
    _propose(proposer, _step(runner, ["tb", "c"]))
    assert proposer.events == [("start", "c", 0.5), ("step", "tb", "c")]

    # "a" and "tb" finished: the runner dropped them.
    proposer.events.clear()
    del runner.requests["a"], runner.requests["tb"]
    _propose(proposer, _step(runner, ["c"]))
    assert proposer.events == [("finish", "a"), ("finish", "tb"), ("step", "c")]
    assert set(proposer.request_params) == {"c"}


def test_chains_and_trees_become_vllm_draft_lists_and_the_seam_reads_the_parents(proposer):
    runner = _runner({"a": 0.0, "tb": 0.0})
    assert _propose(proposer, _step(runner, ["a", "tb"])) == [[7], [2, 3]]
    assert proposer.tree_parents("tb") == (-1, 0, 0)
    assert proposer.tree_parents("a") is None
    _propose(proposer, _step(runner, ["a"]))
    assert proposer.tree_parents("tb") is None  # parents are those of the last propose only


def test_propose_without_the_feed_is_an_error(proposer):
    step = _step(_runner({"a": 0.0}), ["a"])
    with pytest.raises(RuntimeError, match="runner-to-proposer feed"):
        proposer.propose(step.sampled_token_ids, step.num_tokens_no_spec, step.token_ids_cpu)


def test_the_plugin_must_be_selected(monkeypatch):
    monkeypatch.setattr(runtime, "selected_plugins", lambda: ())
    config = SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=3), additional_config=None)
    with pytest.raises(ValueError, match="a fake proposer is configured but the plugin is not selected"):
        RecordingProposer(config)


def _params(**kw):
    base = dict(temperature=0.0, logprobs=None, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0,
                logit_bias=None, allowed_token_ids=None, bad_words=None, min_tokens=0, structured_outputs=None,
                extra_args=None)
    return SimpleNamespace(**{**base, **kw})


def test_greedy_verifier_accepts_only_requests_whose_logits_nothing_changes():
    greedy = GreedyTreeVerifier()
    assert greedy.accepts(_params())
    for change in ({"temperature": 0.7}, {"logprobs": 1}, {"repetition_penalty": 1.1}, {"min_tokens": 2},
                   {"logit_bias": {3: 1.0}}, {"extra_args": {"declab": {}}}):
        assert not greedy.accepts(_params(**change)), change
    assert not greedy.accepts(None)


def test_sampling_verifier_accepts_sampled_requests_whose_logits_only_the_sampling_settings_change():
    sampling = SamplingTreeVerifier()
    assert sampling.accepts(_params(temperature=0.7)) and not sampling.accepts(_params())
    for change in ({"logprobs": 0}, {"presence_penalty": 0.5}, {"min_tokens": 2}, {"bad_words": ["x"]},
                   {"allowed_token_ids": [1]}, {"structured_outputs": object()}, {"extra_args": {"declab": {}}}):
        assert not sampling.accepts(_params(temperature=0.7, **change)), change
    # Both built-in verifiers are on wherever the seam is open: trees for greedy and sampled requests.
    assert DeclabProposer.tree_verifiable(_params()) and DeclabProposer.tree_verifiable(_params(temperature=1))
    assert not DeclabProposer.tree_verifiable(_params(temperature=1, logprobs=1))


def test_greedy_verifier_commits_the_longest_accepted_path_and_the_bonus():
    # root -> nodes 1 (token 5), 2 (token 6); node 2 -> node 3 (token 8). Target argmax per node: 6, 0, 8, 9.
    logits = torch.nn.functional.one_hot(torch.tensor([6, 0, 8, 9]), 10).float()
    req = TreeRequest(row=0, query_start=0, context=4, parents=[-1, 0, 0, 2], verifier=GreedyTreeVerifier())
    assert req.verifier.verify(req, [5, 6, 8], logits, None) == ([0, 2, 3], [6, 8, 9])


def test_a_subscribed_verifier_is_asked_before_the_built_in_ones(monkeypatch):
    class WithLogprobs(TreeVerifier):
        def accepts(self, params):
            return params.temperature > 0

    monkeypatch.setattr(SEAM, "_verifiers", list(SEAM._verifiers))
    assert SEAM.verifier_for(_params(temperature=1.0, logprobs=1)) is None
    assert isinstance(SEAM.verifier_for(_params(temperature=1.0)), SamplingTreeVerifier)
    mine = WithLogprobs()
    SEAM.subscribe(mine)
    assert SEAM.verifier_for(_params(temperature=1.0, logprobs=1)) is mine
    assert isinstance(SEAM.verifier_for(_params()), GreedyTreeVerifier)
    SEAM.unsubscribe(mine)
    assert SEAM.verifier_for(_params(temperature=1.0, logprobs=1)) is None


def test_the_feed_splits_verified_drafts_per_row():
    from declab.patches.runner_feeds_proposer import _verified_drafts

    metadata = SimpleNamespace(draft_token_ids=torch.tensor([4, 5, 6]), num_draft_tokens=[2, 0, 1])
    assert _verified_drafts(metadata, 3) == [[4, 5], [], [6]]
    assert _verified_drafts(None, 2) == [[], []]
