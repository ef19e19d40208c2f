"""Draft agreement along a target's greedy continuation (plain transformers, CPU, no engine): the target's greedy
tokens, the draft's teacher-forced top-1 agreement with them, and the chain acceptance a greedy K-token draft would
get there. Used by ``declab bench draft-agreement`` (its module docstring has the method), draft training's held-out
metric and RAPID's context study."""

from __future__ import annotations

__all__ = ["chain_steps", "draft_agreement", "greedy_continuation", "load_model", "runs"]


def load_model(path: str):
    """A causal LM in float32 on the CPU, in eval mode (the fixtures are stored in float16)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def greedy_continuation(model, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Up to ``max_tokens`` greedy tokens after ``prompt_ids`` (one KV-cached step each), ending after the model's
    end-of-text token if it produces one, as vanilla greedy decoding does."""
    import torch

    eos = model.config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    out: list[int] = []
    with torch.inference_mode():
        step = model(torch.tensor([prompt_ids]), use_cache=True)
        for _ in range(max_tokens):
            token = int(step.logits[0, -1].argmax())
            out.append(token)
            if token in eos_ids or len(out) == max_tokens:
                break
            step = model(torch.tensor([[token]]), past_key_values=step.past_key_values, use_cache=True)
    return out


def draft_agreement(draft, prompt_ids: list[int], continuation: list[int],
                    positions: list[int] | None = None) -> list[bool]:
    """Per continuation position ``i``: does the draft's argmax after ``prompt + continuation[:i]`` equal
    ``continuation[i]``? One teacher-forced forward pass. ``positions``: the rotary positions of ``prompt_ids`` when
    they are not 0, 1, ... (RAPID's ``keep_positions``); the continuation follows the last one by one."""
    import torch

    if not continuation:
        return []
    ids = torch.tensor([prompt_ids + continuation[:-1]])
    kw = {}
    if positions is not None:
        after = list(range(positions[-1] + 1, positions[-1] + len(continuation)))
        kw["position_ids"] = torch.tensor([list(positions) + after])
    with torch.inference_mode():
        logits = draft(ids, **kw).logits[0, len(prompt_ids) - 1:]
    return [bool(p == c) for p, c in zip(logits.argmax(-1).tolist(), continuation)]


def runs(matches: list[bool]) -> list[int]:
    """``run[i]``: consecutive agreeing positions from ``i`` on (bounded by the continuation's end)."""
    out = [0] * (len(matches) + 1)
    for i in range(len(matches) - 1, -1, -1):
        out[i] = out[i + 1] + 1 if matches[i] else 0
    return out[:-1]


def chain_steps(run: list[int], k: int) -> tuple[int, int]:
    """(target forward passes, accepted draft tokens) walking a continuation with a greedy K-token chain draft."""
    i = steps = accepted = 0
    while i < len(run):
        a = min(k, run[i])
        steps, accepted, i = steps + 1, accepted + a, i + a + 1
    return steps, accepted
