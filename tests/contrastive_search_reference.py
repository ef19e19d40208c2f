"""Reference of contrastive search (Su et al. 2022) in plain transformers, no vLLM, one prompt at a time.

The algorithm as HF transformers defines it (``penalty_alpha`` / ``top_k``; in transformers 5 the Hub method
``transformers-community/contrastive-search``), written out step by step the way HF runs it: with ``p`` the model's
next-token distribution after the sequence so far (prompt + generated), the ``k`` most probable tokens ``v`` are
scored

    (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j)

where ``h`` are last-layer hidden states after the final norm (``last_hidden_state`` of the decoder body, equal to
``hidden_states[-1]`` of the full model), ``h_v`` the one of ``v`` appended to the sequence, ``h_j`` those of every
earlier position, prompt included; the best score wins (ties: the more probable candidate, ``argmax``'s first
maximum), the first generated token included. As in HF: the prompt runs once (its hidden states and KV cache kept);
each step copies the cache ``k`` times, feeds the ``k`` candidates as a batch of ``k`` one-token rows, keeps the
winner's cache row, appends its hidden state to the context and takes its logits as the next distribution.

float32, batch 1, prompt ids = ``tokenizer(prompt).input_ids`` (what vLLM feeds for a completions prompt). Stops
after ``max_tokens`` tokens or after EOS (unless ``eos_id`` is None).

CLI (prints a JSON list of token-id lists, one per prompt)::

    python tests/contrastive_search_reference.py --prompts 3 --max-tokens 24 --top-k 4 --alpha 0.6
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def load(model_path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return tok, model


@torch.inference_mode()
def contrastive_search(model, prompt_ids: list[int], *, top_k: int, alpha: float, max_tokens: int,
                       eos_id: int | None = None) -> list[int]:
    body, head = model.get_decoder(), model.get_output_embeddings()
    first = body(input_ids=torch.tensor([list(prompt_ids)]), use_cache=True)
    cache = first.past_key_values
    context = F.normalize(first.last_hidden_state[0].float(), dim=-1)  # [T, H]
    logits = head(first.last_hidden_state[0, -1])
    out: list[int] = []
    for _ in range(max_tokens):
        probs, ids = torch.softmax(logits.float(), dim=-1).topk(top_k)
        cache.batch_repeat_interleave(top_k)  # one copy of the context's cache per candidate
        step = body(input_ids=ids.unsqueeze(1), past_key_values=cache, use_cache=True)
        cands = step.last_hidden_state[:, -1]  # [k, H]
        penalty = (F.normalize(cands.float(), dim=-1) @ context.T).max(dim=-1).values
        winner = int(((1.0 - alpha) * probs - alpha * penalty).argmax())
        cache = step.past_key_values
        cache.batch_select_indices(torch.tensor([winner]))
        context = torch.cat([context, F.normalize(cands[winner : winner + 1].float(), dim=-1)])
        logits = head(cands[winner])
        token = int(ids[winner])
        out.append(token)
        if eos_id is not None and token == eos_id:
            break
    return out


def main() -> None:
    from declab.integrations.models import default_model
    from declab.integrations.prompts import default_bench_prompts

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.6)
    args = ap.parse_args()
    tok, model = load(default_model())
    print(json.dumps([contrastive_search(model, tok(p).input_ids, top_k=args.top_k, alpha=args.alpha,
                                         max_tokens=args.max_tokens) for p in default_bench_prompts(args.prompts)]))


if __name__ == "__main__":
    main()
