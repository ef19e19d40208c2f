"""The plain-torch draft LM of ``declab.integrations.sdk.draft_model`` against transformers' ``LlamaForCausalLM`` on
the same folder (the naive reference): logits and final hidden states of packed batches, after cache truncation and
sync, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch

from declab.integrations.models import default_draft_model
from declab.integrations.sdk.draft_model import DraftModel, weights_fingerprint

DRAFT = default_draft_model()
pytestmark = pytest.mark.skipif(DRAFT is None, reason="no draft model (../shared/fixtures/draft-5m)")


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(DRAFT, dtype=torch.float32).eval()
    return DraftModel.from_pretrained(DRAFT), reference


def reference_outputs(reference, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        out = reference(torch.tensor([tokens]), output_hidden_states=True)
    return out.logits[0], out.hidden_states[-1][0]


def test_packed_batches_match_the_reference_position_by_position(models):
    draft, reference = models
    a, b, c = [5, 100, 200, 300, 400, 17, 99, 3], [7, 8, 9, 1000, 2000], list(range(30, 90))
    ref = {name: reference_outputs(reference, seq) for name, seq in (("a", a), ("b", b), ("c", c))}
    caches = [draft.new_cache() for _ in range(3)]
    # Uneven chunks per request and call (prefill-like and one-token steps in one packed forward).
    cuts = [(3, 1, 50), (4, 3, 1), (8, 5, 60)]
    done = [0, 0, 0]
    for step in cuts:
        new = [seq[d:e] for seq, d, e in zip((a, b, c), done, step)]
        rows = [i for i, n in enumerate(new) if n]
        out = draft.forward([caches[i] for i in rows], [new[i] for i in rows])
        for j, i in enumerate(rows):
            logits, hidden = ref["abc"[i]]
            assert torch.allclose(out.logits[j], logits[step[i] - 1], atol=1e-4)
            assert torch.allclose(out.hidden[j], hidden[step[i] - 1], atol=1e-4)
        done = [max(d, e) for d, e in zip(done, step)]
    assert [len(cache) for cache in caches] == [8, 5, 60]


def test_sync_cuts_rejected_tokens_and_encodes_what_replaced_them(models):
    draft, reference = models
    cache = draft.new_cache()
    draft.forward([cache], [[1, 2, 3, 4, 5, 6]])
    todo = cache.sync([1, 2, 3, 9, 10])  # the target rejected 4 and committed 9, 10
    assert todo == [9, 10] and cache.tokens == [1, 2, 3]
    out = draft.forward([cache], [todo])
    logits, _ = reference_outputs(reference, [1, 2, 3, 9, 10])
    assert torch.allclose(out.logits[0], logits[-1], atol=1e-4)
    assert cache.sync([1, 2, 3, 9, 10]) == [] and cache.nbytes > 0


def test_anchor_positions_encode_the_tokens_where_they_stood(models):
    """RAPID's ``keep_positions``: a cache whose first slots hold tokens kept from a longer prompt encodes them at
    their prompt positions and what follows one by one after the last, as the reference does with those
    ``position_ids``; packed from 0 it differs."""
    draft, reference = models
    anchors = [0, 1, 2, 40, 41, 42, 43, 90, 91]
    tokens = [5, 100, 200, 300, 400, 17, 99, 3, 8, 1000, 2000, 7]  # 9 anchored, then 3 at positions 92-94
    positions = anchors + [92, 93, 94]
    with torch.inference_mode():
        ref = reference(torch.tensor([tokens]), position_ids=torch.tensor([positions])).logits[0]
    cache = draft.new_cache(anchors)
    out = draft.forward([cache], [tokens[:10]])  # the anchored slots and one more in one forward
    assert torch.allclose(out.logits[0], ref[9], atol=1e-4)
    for i in (10, 11):  # then one token per forward, as drafting goes
        out = draft.forward([cache], [[tokens[i]]])
        assert torch.allclose(out.logits[0], ref[i], atol=1e-4)
    assert [cache.position(s) for s in (0, 3, 8, 9, 11)] == [0, 40, 91, 92, 94]
    packed = draft.forward([draft.new_cache()], [tokens]).logits[0]
    assert not torch.allclose(packed, ref[-1], atol=1e-3)
    with pytest.raises(ValueError, match="anchor_positions must be increasing"):
        draft.new_cache([3, 3])
    with pytest.raises(ValueError, match="past the draft's 2048 positions"):  # positions, not slots, are bounded
        draft.forward([draft.new_cache([2047])], [[1, 2]])


def test_refusals_name_the_problem(models, tmp_path):
    draft, _ = models
    with pytest.raises(ValueError, match="at least one new token"):
        draft.forward([draft.new_cache()], [[]])
    with pytest.raises(ValueError, match="past the draft's 2048 positions"):
        draft.forward([draft.new_cache()], [[1] * 2049])
    with pytest.raises(ValueError, match="draft_model: .* is not a model folder"):
        DraftModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a Llama causal LM"):
        DraftModel.from_pretrained(tmp_path)


def test_weights_fingerprint_follows_the_values_not_the_storage():
    g = torch.Generator().manual_seed(0)
    weights = {"b": torch.randn(3, 4, generator=g), "a": torch.randn(5, generator=g)}
    same = {"a": weights["a"].clone(), "b": weights["b"].clone()}  # another copy, another order
    assert weights_fingerprint(weights) == weights_fingerprint(same)
    assert weights_fingerprint(weights) == weights_fingerprint({k: v.double() for k, v in weights.items()})
    nudged = dict(weights, a=weights["a"] + 1e-3)
    assert weights_fingerprint(nudged) != weights_fingerprint(weights)
    assert weights_fingerprint({"c": weights["a"], "b": weights["b"]}) != weights_fingerprint(weights)  # names count
