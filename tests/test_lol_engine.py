"""LOL (paper 29) through a real vLLM engine on decoder-29m (CPU): the layer-capture seam and the amateur.

* A batch mixing LOL requests (modes ``lol``, ``layers``, ``amateur``) with plain rows: each LOL request's greedy
  tokens equal a naive plain-torch reference of the formula (written out here, not the plugin's code: HF
  transformers' ``LlamaForCausalLM`` re-run on the whole sequence every step, early-exit logits from
  ``hidden_states[k]`` through ``model.norm`` and ``lm_head``, the amateur's weights merged from the LoRA factors
  here); the plain rows are token-identical to vanilla vLLM (the session's ``scale_out`` reference).
* Bad parameters are refused at admission with an error naming the parameter, and the engine keeps serving.

Engine: the ``all_logits`` profile (every logits plugin, LOL included), shared with ``tests/test_scale_out.py``.
"""

from __future__ import annotations

import pytest
import torch

from declab.integrations.models import default_model
from declab.integrations.prompts import CODE_PROMPTS

pytestmark = [pytest.mark.engine, pytest.mark.vanilla("scale_out")]

GEN_TOKENS = 6
PLAIN_TOKENS = 32  # the scale_out vanilla reference's length
QUESTION = "Question: Where is Mikagro Works headquartered?\nAnswer:"
LEADING = "Question: What was the profession of Zuhandar Linhanzu? My teacher said astronomer.\nAnswer:"
CASES = (  # (prompt, declab arguments)
    (QUESTION, {"method": "lol"}),
    (LEADING, {"method": "lol", "lower_layer": 6, "alpha": 0.5, "lower_weight": 1.0, "beta": 0.0}),
    (QUESTION, {"method": "lol", "mode": "layers", "lower_layer": 2}),
    (LEADING, {"method": "lol", "mode": "layers", "lower_layer": 4}),
    (LEADING, {"method": "lol", "mode": "amateur", "alpha": 2.0}),
)
DEFAULTS = {"mode": "lol", "lower_layer": 4, "alpha": 1.0, "lower_weight": 0.5, "beta": 0.1}
BAD = (  # (declab arguments, the parameter the error must name)
    ({"method": "lol", "mode": "dola"}, "declab.mode"),
    ({"method": "lol", "lower_layer": 0}, "declab.lower_layer"),
    ({"method": "lol", "alpha": -1.0}, "declab.alpha"),
    ({"method": "lol", "beta": 1.5}, "declab.beta"),
    ({"method": "lol", "lower_weight": float("nan")}, "declab.lower_weight"),
    ({"method": "lol", "alpha": True}, "declab.alpha"),
)


def mixed_batch(llm) -> dict:
    from vllm import SamplingParams

    prompts = [p for p, _ in CASES] + list(CODE_PROMPTS[:3]) + [QUESTION, LEADING]
    params = [SamplingParams(temperature=0.0, max_tokens=GEN_TOKENS, extra_args={"declab": a}) for _, a in CASES]
    params += [SamplingParams(temperature=0.0, max_tokens=PLAIN_TOKENS)] * 3
    params += [SamplingParams(temperature=0.0, max_tokens=GEN_TOKENS)] * 2  # plain answers of the two questions
    outs = llm.generate(prompts, params, use_tqdm=False)
    errors = []
    for args, _ in BAD:
        try:
            llm.generate([QUESTION], SamplingParams(max_tokens=2, extra_args={"declab": args}), use_tqdm=False)
            errors.append(None)
        except Exception as e:  # noqa: BLE001 - VLLMValidationError in vLLM 0.32 (not a ValueError subclass)
            errors.append(f"{type(e).__name__}: {e}")
    after = llm.generate([QUESTION], SamplingParams(temperature=0.0, max_tokens=GEN_TOKENS,
                                                    extra_args={"declab": {"method": "lol"}}), use_tqdm=False)
    return {"token_ids": [list(o.outputs[0].token_ids) for o in outs], "errors": errors,
            "after": list(after[0].outputs[0].token_ids)}


def _hf(weights_delta: bool):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model(), dtype=torch.float32).eval()
    if weights_delta:
        from safetensors import safe_open

        from declab.plugins.lol.amateur import DELTA_FILE

        with safe_open(str(DELTA_FILE), framework="pt") as f:
            scale = float(f.metadata()["scale"])
            state = model.state_dict()
            for key in f.keys():
                if key.endswith(".lora_A"):
                    stem = key[: -len(".lora_A")]
                    a, b = f.get_tensor(key).float(), f.get_tensor(stem + ".lora_B").float()
                    state[stem + ".weight"] += scale * (b @ a)
            model.load_state_dict(state)
    return model


def _rows(model, ids: list[int], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(final, early-exit after ``layer`` layers) log-probabilities at the last position, full re-run."""
    out = model(torch.tensor([ids]), output_hidden_states=True)
    lower = model.lm_head(model.model.norm(out.hidden_states[layer][0, -1]))
    return torch.log_softmax(out.logits[0, -1].float(), -1), torch.log_softmax(lower.float(), -1)


@torch.no_grad()
def reference(prompt: str, args: dict, orig, amateur, tokenizer) -> list[int]:
    p = {**DEFAULTS, **{k: v for k, v in args.items() if k != "method"}}
    ids, out = tokenizer(prompt)["input_ids"], []
    for _ in range(GEN_TOKENS):
        of, ol = _rows(orig, ids, p["lower_layer"])
        if p["mode"] == "layers":
            score = of - ol
        else:
            af, al = _rows(amateur, ids, p["lower_layer"])
            score = (1 + p["alpha"]) * of - p["alpha"] * af
            if p["mode"] == "lol":
                score = score + p["lower_weight"] * ((1 + p["alpha"]) * ol - p["alpha"] * al)
        if p["beta"] > 0:
            score[of < of.max() + torch.log(torch.tensor(p["beta"]))] = float("-inf")
        token = int(score.argmax())
        out.append(token)
        ids = ids + [token]
        if token == tokenizer.eos_token_id:
            break
    return out


@pytest.fixture(scope="module")
def engine_result(all_logits_engine) -> dict:
    return all_logits_engine.run(mixed_batch)


def test_lol_requests_match_the_naive_reference(engine_result):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model())
    orig, amateur = _hf(False), _hf(True)
    for (prompt, args), got in zip(CASES, engine_result["token_ids"]):
        assert got == reference(prompt, args, orig, amateur, tok), (prompt, args)
    assert engine_result["after"] == engine_result["token_ids"][0]  # still serving, same answer


def test_lol_changes_answers_and_plain_rows_are_vanilla(engine_result, vanilla):
    base = vanilla("scale_out")
    for i in range(3):
        assert engine_result["token_ids"][len(CASES) + i] == base["token_ids"][i][:PLAIN_TOKENS]
    # Not vacuous: some LOL request answers otherwise than plain greedy on the same prompt.
    plain = dict(zip((QUESTION, LEADING), engine_result["token_ids"][len(CASES) + 3:]))
    assert any(got != plain[prompt] for (prompt, _), got in zip(CASES, engine_result["token_ids"]))


def test_bad_lol_parameters_are_refused_naming_the_parameter(engine_result):
    for (args, name), error in zip(BAD, engine_result["errors"]):
        assert error is not None and name in error, (args, error)
