"""SpecDec++'s acceptance head (plugins/specdec_pp/head.py) and the metrics of its training script (no vLLM)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from declab.integrations.models import default_draft_model
from declab.integrations.sdk.draft_model import load_folder_weights, weights_fingerprint
from declab.plugins.specdec_pp.head import AcceptanceHead, prob_features
from declab.plugins.specdec_pp.train_head import (
    DEFAULT_HEAD,
    HeldOutSequence,
    auc,
    calibration,
    fit,
    fixed_policy,
    simulate,
    threshold_policy,
)

pytestmark = pytest.mark.core


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread is ~100x faster than two on the shared, loaded cores (spinning intra-op threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(batch: int = 5, hidden: int = 16, vocab: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, hidden, generator=g), torch.softmax(3 * torch.randn(batch, vocab, generator=g), -1)


@pytest.mark.parametrize("mlp_hidden,use_hidden", [(0, True), (8, True), (0, False)])
def test_save_load_round_trip(tmp_path, mlp_hidden, use_hidden):
    hidden, probs = _inputs()
    head = AcceptanceHead(16, mlp_hidden, use_hidden)
    head.set_standardisation(head.features(*_inputs(64, seed=1)))
    torch.nn.init.normal_(head.net[0].weight)
    path = tmp_path / "head.safetensors"
    head.save(path)
    loaded = AcceptanceHead.load(path)
    assert loaded.config() == head.config() and loaded.draft is None
    assert torch.equal(loaded.accept_prob(hidden, probs), head.eval().accept_prob(hidden, probs))
    head.draft = {"name": "toy", "fingerprint": "0123456789abcdef"}
    head.save(path)
    assert AcceptanceHead.load(path).draft == head.draft


def test_load_refuses_a_file_that_is_not_a_head(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="path"):
        AcceptanceHead.load(path)


def test_accept_prob_shape_and_range():
    head = AcceptanceHead(16, 8).eval()
    torch.nn.init.normal_(head.net[0].weight, std=10.0)
    p = head.accept_prob(*_inputs(batch=7))
    assert p.shape == (7,) and p.dtype == torch.float32
    assert bool(((p >= 0) & (p <= 1)).all())
    with pytest.raises(ValueError, match="hidden"):
        head.accept_prob(torch.zeros(7, 15), _inputs(batch=7)[1])


def test_prob_features():
    probs = torch.tensor([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
    f = prob_features(probs)
    assert torch.allclose(f[:, 0], torch.tensor([0.5, 1.0]))
    assert torch.allclose(f[:, 1], torch.tensor([0.2, 1.0]))
    entropy = -(0.5 * torch.tensor(0.5).log() + 0.3 * torch.tensor(0.3).log() + 0.2 * torch.tensor(0.2).log())
    assert torch.allclose(f[:, 2], torch.stack([entropy, torch.tensor(0.0)]))


def _toy_set(n: int, seed: int):
    """Labels decided by the first hidden unit: accepted iff hidden[0] > 0 (separable)."""
    hidden, probs = _inputs(n, seed=seed)
    head = AcceptanceHead(16)
    return head.features(hidden, probs), (hidden[:, 0] > 0).float(), hidden, probs


@pytest.mark.parametrize("mlp_hidden", [0, 16])
def test_a_head_learns_a_separable_toy_set_and_is_monotonic_in_its_signal(mlp_hidden):
    torch.manual_seed(0)
    x, y, _, _ = _toy_set(1000, seed=1)
    xv, yv, hidden, probs = _toy_set(500, seed=2)
    head, _ = fit(AcceptanceHead(16, mlp_hidden), (x, y), (xv, yv), steps=150, lr=5e-2)
    p = head.accept_prob(hidden, probs)
    assert float(((p > 0.5).float() == yv).float().mean()) > 0.95
    assert auc(p, yv) > 0.99
    sweep = hidden[:1].repeat(9, 1)
    sweep[:, 0] = torch.linspace(-3, 3, 9)
    ps = head.accept_prob(sweep, probs[:1].repeat(9, 1))
    assert bool((ps[1:] >= ps[:-1] - 1e-4).all()) and ps[0] < 0.1 and ps[-1] > 0.9


def test_metrics_on_known_cases():
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), y) == 0.5
    report = calibration(torch.tensor([0.25, 0.25, 0.25, 0.25]), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert report["ece"] == pytest.approx(0.0) and report["brier"] == pytest.approx(0.1875)
    assert report["base_rate"] == 0.25 and sum(r["count"] for r in report["reliability"]) == 4


def test_simulation_counts_tokens_per_target_forward():
    labels = [True, True, False, True, True, True, True, False]
    seq = HeldOutSequence(labels, [0.9] * len(labels), {2: [0.2] * 5, 7: []})
    fixed2 = simulate([seq], fixed_policy(2))
    # steps from positions 0 (2 accepted -> 3 tokens), 3 (2 -> 3), 6 (1 -> 2): 8 tokens, 3 forwards
    assert fixed2["steps"] == 3 and fixed2["tokens_per_target_forward"] == pytest.approx(8 / 3)
    assert fixed2["accepted_per_step"] == pytest.approx(5 / 3)
    # a chain from 0 sees the on-path predictions up to the rejection at 2, then the draft's own (off-path) ones
    assert seq.chain_probs(0, 8) == [0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.2, 0.2]
    assert seq.chain_probs(3, 8) == [0.9, 0.9, 0.9, 0.9, 0.9]
    # h = 0.3 with p = 0.9: 1 - 0.9 = 0.1, 1 - 0.81 = 0.19, 1 - 0.729 = 0.271, 1 - 0.6561 > 0.3 -> 4 drafted
    assert threshold_policy(0.3)([0.9] * 8, 8) == 4
    assert threshold_policy(0.3)(seq.chain_probs(0, 8), 8) == 4  # 1 - 0.729 * 0.2 > 0.3 at the fourth token
    assert threshold_policy(0.05)([0.9] * 8, 8) == 1
    assert threshold_policy(0.999)([0.9] * 8, 8) == 8


def test_the_committed_head_gives_probabilities_on_the_real_drafts_features():
    draft_dir = Path(default_draft_model())
    if not (draft_dir / "config.json").is_file():
        pytest.skip(f"no draft model at {draft_dir}")
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    head = AcceptanceHead.load(DEFAULT_HEAD)
    # It records the draft it was trained on, and that is the shared draft-5m (what the proposer checks at start-up).
    assert head.draft == {"name": "draft-5m", "fingerprint": weights_fingerprint(load_folder_weights(draft_dir))}
    draft = LlamaForCausalLM.from_pretrained(str(draft_dir), dtype=torch.float32).eval()
    ids = Tokenizer.from_file(str(draft_dir / "tokenizer.json")).encode("def fibonacci(n):\n    if n < 2:\n").ids
    with torch.no_grad():
        hidden = draft.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        probs = torch.softmax(draft.lm_head(hidden), -1)
    p = head.accept_prob(hidden, probs)
    assert p.shape == (len(ids),)
    assert bool(((p >= 0) & (p <= 1)).all()) and bool(torch.isfinite(p).all())
    assert float(p.std()) > 0  # depends on its input
