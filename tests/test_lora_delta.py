"""Shipped weight deltas (``integrations.sdk.lora_delta``) and the drafts made from them (``integrations.models``):
the merge against the naive formula, loud failures on a delta for another model, and the named drafts a setting
may give, materialized once into the cache."""

from __future__ import annotations

import json

import pytest
import torch

from declab.integrations import models
from declab.integrations.sdk.lora_delta import (LoRALinear, add_adapters, load_into_adapters, merge_delta, read_delta,
                                                save_delta)

pytestmark = pytest.mark.core


class _Layer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = torch.nn.Module()
        self.self_attn.q_proj = torch.nn.Linear(6, 4, bias=False)
        self.input_layernorm = torch.nn.Module()
        self.input_layernorm.weight = torch.nn.Parameter(torch.ones(6))


class _Model(torch.nn.Module):
    """The attribute layout of an HF Llama: ``model.layers[i].self_attn.q_proj``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([_Layer(), _Layer()])


def _trained_delta(tmp_path, scale=2.0):
    torch.manual_seed(0)
    model = _Model()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    adapters = add_adapters(model, ("self_attn.q_proj",), rank=3, scale=scale)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora" not in n)
    for a in adapters.values():
        torch.nn.init.normal_(a.lora_B)
    norm = torch.full((6,), 1.5)
    path = tmp_path / "delta.safetensors"
    n = save_delta(path, adapters, {"rank": 3, "scale": scale, "base": "toy"},
                   whole={"model.layers.1.input_layernorm.weight": norm})
    assert n == 2 * (3 * 6 + 4 * 3) + 6
    return model, base, adapters, path


def test_merge_is_w_plus_scaled_b_a_and_whole_tensors_replace(tmp_path):
    model, base, adapters, path = _trained_delta(tmp_path)
    tensors, meta = read_delta(path)
    assert meta["rank"] == "3" and meta["base"] == "toy"
    merged = merge_delta(base, path)
    for (layer, target), a in adapters.items():
        name = f"model.layers.{layer}.{target}.weight"
        a16, b16 = a.lora_A.detach().half().float(), a.lora_B.detach().half().float()  # stored as float16
        assert torch.allclose(merged[name], base[name] + 2.0 * b16 @ a16, atol=1e-6)
        x = torch.randn(5, 6)
        assert torch.allclose(x @ merged[name].T, a(x), atol=1e-2)  # the merged layer is the adapted one
    assert torch.equal(merged["model.layers.1.input_layernorm.weight"], torch.full((6,), 1.5))
    assert torch.equal(merged["model.layers.0.input_layernorm.weight"], base["model.layers.0.input_layernorm.weight"])
    assert isinstance(adapters[(0, "self_attn.q_proj")], LoRALinear)


def test_a_delta_for_another_model_is_refused(tmp_path):
    _, base, _, path = _trained_delta(tmp_path)
    wrong_shape = dict(base, **{"model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 7)})
    with pytest.raises(ValueError, match=r"has shape \(4, 7\), the delta \(4, 6\) \(made for another model: toy\)"):
        merge_delta(wrong_shape, path)
    missing = {k: v for k, v in base.items() if not k.startswith("model.layers.1.")}
    with pytest.raises(ValueError, match="not a weight of the base model"):
        merge_delta(missing, path)


def test_training_resumes_from_a_saved_delta(tmp_path):
    model, _, adapters, path = _trained_delta(tmp_path)
    fresh = _Model()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "lora" not in k}, strict=False)
    resumed = add_adapters(fresh, ("self_attn.q_proj",), rank=3, scale=2.0)
    norm = {"model.layers.1.input_layernorm.weight": fresh.model.layers[1].input_layernorm.weight}
    meta = load_into_adapters(path, resumed, norm)
    assert meta["base"] == "toy"
    for key, a in adapters.items():  # the saved (float16) factors, in the new adapters
        assert torch.equal(resumed[key].lora_A, a.lora_A.detach().half().float())
        assert torch.equal(resumed[key].lora_B, a.lora_B.detach().half().float())
    assert torch.equal(norm["model.layers.1.input_layernorm.weight"], torch.full((6,), 1.5))
    with pytest.raises(ValueError, match=r"does not match the adapters: missing \[\], extra "
                                         r"\['model.layers.1.input_layernorm.weight'\]"):  # its whole tensor not given
        load_into_adapters(path, resumed, None)
    other_rank = add_adapters(_Model(), ("self_attn.q_proj",), rank=2, scale=2.0)
    with pytest.raises(ValueError, match=r"has shape \(3, 6\), the adapter \(2, 6\)"):
        load_into_adapters(path, other_rank, {"model.layers.1.input_layernorm.weight": torch.ones(6)})


def test_named_drafts_resolve_and_materialize_once(tmp_path, monkeypatch):
    """``resolve_draft_model``: empty -> the default, a path as given, ``draft-5m`` -> the shared fixture, a bundled
    delta's name -> base + delta written once under $DECLAB_CACHE (a second call reuses the folder)."""
    from safetensors.torch import load_file, save_file

    _, base, _, delta = _trained_delta(tmp_path)
    shared = tmp_path / "shared"
    folder = shared / "fixtures" / models.SHARED_DRAFT
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer.json").write_text("{}")
    save_file({k: v.half() for k, v in base.items()}, str(folder / "model.safetensors"))
    monkeypatch.setenv("DECLAB_SHARED", str(shared))
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(models.DRAFT_MODEL_ENV, raising=False)
    monkeypatch.setitem(models.BUNDLED_DRAFT_DELTAS, "toy-long", delta)

    assert models.resolve_draft_model("") == models.resolve_draft_model(None) == str(folder)
    assert models.resolve_draft_model("/some/folder") == "/some/folder"
    assert models.resolve_draft_model("draft-5m") == str(folder)
    made = models.resolve_draft_model("toy-long")
    assert made.startswith(str(tmp_path / "cache")) and (models.Path(made) / "tokenizer.json").is_file()
    weights = load_file(str(models.Path(made) / "model.safetensors"))
    expected = merge_delta({k: v.half() for k, v in base.items()}, delta)
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    stamp = (models.Path(made) / "model.safetensors").stat().st_mtime_ns
    assert models.resolve_draft_model("toy-long") == made
    assert (models.Path(made) / "model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.setenv(models.DRAFT_MODEL_ENV, "toy-long")  # the environment variable takes names too
    assert models.default_draft_model() == made
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.name.startswith(".")]  # no leftovers
    # Reports name a merged folder by the draft's name, any other folder by its own name.
    assert models.draft_label(made) == "toy-long" and models.draft_label(folder) == models.SHARED_DRAFT
    assert models.draft_label("/x/toy-long-notahash") == "toy-long-notahash"
