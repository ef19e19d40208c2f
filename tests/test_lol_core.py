"""LOL's pure parts (no engine): the score formula, the amateur's LoRA merge and the plain-torch amateur's early-exit
logits against transformers' ``hidden_states`` (the naive reference), on decoder-29m."""

from __future__ import annotations

import math

import pytest
import torch

from declab.integrations.models import default_model
from declab.plugins.lol.amateur import DELTA_FILE, merge_delta, read_delta
from declab.plugins.lol.core import lol_scores, plausible

pytestmark = pytest.mark.core


def test_scores_follow_the_formula_on_the_plausible_set():
    g = torch.Generator().manual_seed(0)
    of, ol, af, al = (torch.randn(50, generator=g) * 3 for _ in range(4))
    lp = lambda x: torch.log_softmax(x, -1)  # noqa: E731
    got = lol_scores(of, ol, af, al, mode="lol", alpha=0.7, lower_weight=0.4, beta=0.1)
    want = 1.7 * lp(of) - 0.7 * lp(af) + 0.4 * (1.7 * lp(ol) - 0.7 * lp(al))
    keep = lp(of) >= lp(of).max() + math.log(0.1)
    assert torch.allclose(got[keep], want[keep], atol=1e-5)
    assert torch.isinf(got[~keep]).all() and keep.sum() < 50
    layers = lol_scores(of, ol, None, None, mode="layers", alpha=0.7, lower_weight=0.4, beta=0.0)
    assert torch.allclose(layers, lp(of) - lp(ol), atol=1e-5)
    amateur = lol_scores(of, None, af, None, mode="amateur", alpha=0.7, lower_weight=0.4, beta=0.0)
    assert torch.allclose(amateur, 1.7 * lp(of) - 0.7 * lp(af), atol=1e-5)
    # The original model's top token is always allowed; alpha 0 with the amateur is plain greedy.
    assert plausible(lp(of), 1.0).sum() == 1
    plain = lol_scores(of, None, af, None, mode="amateur", alpha=0.0, lower_weight=0.0, beta=0.1)
    assert int(plain.argmax()) == int(of.argmax())


@pytest.mark.skipif(not DELTA_FILE.is_file(), reason="amateur delta not trained")
def test_the_amateur_is_base_plus_the_low_rank_delta_and_its_exits_match_transformers():
    from transformers import AutoModelForCausalLM

    from declab.integrations.sdk.draft_model import DraftModel, load_folder_weights
    from declab.plugins.lol.amateur import load_amateur

    factors, meta = read_delta()
    assert DELTA_FILE.stat().st_size < 1_000_000  # the repository's size budget
    base = load_folder_weights(default_model())
    merged = merge_delta(base)
    key = "model.layers.3.mlp.down_proj"
    expected = base[key + ".weight"] + float(meta["scale"]) * (factors[key + ".lora_B"].float()
                                                                @ factors[key + ".lora_A"].float())
    assert torch.allclose(merged[key + ".weight"], expected)
    reference = AutoModelForCausalLM.from_pretrained(default_model(), dtype=torch.float32).eval()
    reference.load_state_dict({**reference.state_dict(), **{k: v for k, v in merged.items()
                                                             if k in reference.state_dict()}})
    amateur: DraftModel = load_amateur(default_model())
    tokens = [17, 300, 5, 900, 42, 8, 1000, 77]
    cache = amateur.new_cache()
    amateur.forward([cache], [tokens[:5]])
    out = amateur.forward([cache], [tokens[5:]], exit_layer=3)
    with torch.inference_mode():
        ref = reference(torch.tensor([tokens]), output_hidden_states=True)
        ref_exit = reference.lm_head(reference.model.norm(ref.hidden_states[3][0, -1]))
    assert torch.allclose(out.logits[0], ref.logits[0, -1], atol=1e-3)
    assert torch.allclose(out.exit_logits[0], ref_exit, atol=1e-3)
    with pytest.raises(ValueError, match="exit_layer"):
        amateur.forward([amateur.new_cache()], [[1]], exit_layer=8)
