"""Plain-transformers reference of Superposed Decoding (the reference repository's loop, one prompt at a time).

The same ``SuperposedDrafts`` ranks the drafts, so comparing this with the engine checks what vLLM adds: the mixed
input embedding at each generated position (row-input-embeddings seam), the KV cache of the superposed sequence,
and the completions handed back (bundled-completions seam). Runs the model with ``inputs_embeds`` and its own
``past_key_values``: prompt first, then one superposed embedding per step, as ``superposed_generation.py`` does.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from declab.plugins.superposed.core import SuperposedDrafts


@torch.inference_mode()
def reference_completions(model: Any, prompt_ids: Sequence[int], *, k: int, max_tokens: int, eos_token_id: int | None,
                          ngram: Callable | None, alpha: float, softmax_temperature: float, n_token_sample: int,
                          penalty: float) -> list[tuple[list[int], bool]]:
    """The k completions (tokens, ended with EOS), best first, of one prompt; ``model`` a HF causal LM."""
    embed = model.get_input_embeddings()
    drafts = SuperposedDrafts(k, prompt_ids, eos_token_id, alpha=alpha, softmax_temperature=softmax_temperature,
                              n_token_sample=n_token_sample, penalty=penalty, ngram=ngram)
    out = model(input_ids=torch.tensor([list(prompt_ids)]), use_cache=True)
    past = out.past_key_values
    logits = out.logits[0, -1]
    for s in range(max_tokens):
        drafts.step(s, logits)
        if s == max_tokens - 1 or (eos_token_id is not None and drafts.placeholder() == eos_token_id):
            break
        tokens, weights = drafts.mixture(s)
        mixed = (torch.tensor(weights).unsqueeze(1) * embed(torch.tensor(tokens)).float()).sum(0)
        out = model(inputs_embeds=mixed.view(1, 1, -1), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
    return [(tokens, ended) for tokens, _, ended in drafts.completions()]
