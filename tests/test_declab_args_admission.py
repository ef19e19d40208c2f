"""Seam ``declab_args_admission``: with no logits plugin selected (no router), a request's declab arguments are
still validated at admission, the parameter named (found by the fuzz suite: ``declab.method: token_recycling`` on a
server with only the proposer was accepted and ignored, HTTP 200)."""

from __future__ import annotations


def declab_args_errors(llm) -> dict[str, str]:
    """The error (type: message) of each request whose declab arguments name no servable method; "ok" if none."""
    from vllm import SamplingParams

    cases = {
        "proposer": {"declab": {"method": "token_recycling"}},
        "not_enabled": {"declab": {"method": "momentum", "alpha": 0.2}},
        "unknown": {"declab.method": "nope"},
        "no_method": {"declab": {"alpha": 0.2}},
        "plain": None,
    }
    out = {}
    for name, extra_args in cases.items():
        try:
            llm.generate(["def f():"], SamplingParams(max_tokens=2, temperature=0, extra_args=extra_args),
                         use_tqdm=False)
            out[name] = "ok"
        except ValueError as e:
            out[name] = f"ValueError: {e}"
    return out


def test_declab_arguments_are_refused_without_a_router(tr_chain_engine):
    errors = tr_chain_engine.run(declab_args_errors)
    assert errors["plain"] == "ok", errors
    assert "declab.method: 'token_recycling' is a speculative-proposer plugin" in errors["proposer"]
    assert "declab.method: 'momentum' is not enabled on this engine" in errors["not_enabled"]
    assert "declab.method: unknown method 'nope'" in errors["unknown"]
    assert "declab.method is required" in errors["no_method"]

