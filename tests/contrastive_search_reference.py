"""Naive reference of contrastive search (Su et al. 2022) in plain transformers, no vLLM, no KV cache.

The algorithm as HF transformers defines it (``penalty_alpha`` / ``top_k``; its Hub method
``transformers-community/contrastive-search``): with ``p`` the model's next-token distribution after the sequence so
far (prompt + generated), the ``k`` most probable tokens ``v`` are scored

    (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j)

where ``h`` are last-layer hidden states after the final norm (``last_hidden_state`` of the decoder body), ``h_v``
the one at the position of ``v`` appended to the sequence, ``h_j`` those of every earlier position, prompt
included; the best score wins (ties: the more probable candidate), the first generated token included.

Naive on purpose: each step runs the whole sequence again, once per candidate (one batch of ``k`` rows
``sequence + [v]``, no padding, no cache); the context's hidden states are row 0's first positions and the next
distribution is the winner row's last logits row. float32, batch 1, prompt ids = ``tokenizer(prompt).input_ids``
(what vLLM feeds for a completions prompt). Stops after ``max_tokens`` tokens or after EOS (unless
``ignore_eos``).
"""

from __future__ import annotations

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
    seq = list(prompt_ids)
    logits = head(body(input_ids=torch.tensor([seq])).last_hidden_state[0, -1])
    out: list[int] = []
    for _ in range(max_tokens):
        probs, ids = torch.softmax(logits.float(), dim=-1).topk(top_k)
        rows = torch.tensor([seq + [int(v)] for v in ids])
        hidden = body(input_ids=rows).last_hidden_state.float()  # [k, len + 1, H]
        context = F.normalize(hidden[0, :-1], dim=-1)
        cands = F.normalize(hidden[:, -1], dim=-1)
        penalty = (cands @ context.T).max(dim=-1).values
        winner = int(((1.0 - alpha) * probs - alpha * penalty).argmax())
        token = int(ids[winner])
        out.append(token)
        seq.append(token)
        if eos_id is not None and token == eos_id:
            break
        logits = head(hidden[winner, -1])
    return out
