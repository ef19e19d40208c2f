"""What a contrastive search request is refused for at admission (``ProposerHook.check_request``; no torch, no vLLM).

Contrastive search is deterministic and chooses each token itself among the model's raw top-k: vLLM's sampling,
its logits-changing options and its log-probs (which would be greedy's, not the chosen candidates') cannot apply,
and the engine must run the contrastive search proposer with room for ``top_k`` candidates per step. Every refusal
is a ``ValueError`` naming the parameter or option (HTTP 400). Accepted requests skip reading the prefix cache: the
method needs the hidden state of every prompt position, which a cached prefix does not recompute.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk.sampling_options import refuse_sampling_options
from declab.plugins.contrastive_search.spec import PROPOSER_PATH, SPEC

GREEDY_EPS = 1e-5  # vLLM's greedy threshold (vllm.sampling_params._SAMPLING_EPS)
REFUSED_OPTIONS = ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "logit_bias",
                   "allowed_token_ids", "bad_words", "prompt_logprobs", "structured_outputs")
REASON = "contrastive search scores the model's raw top-k itself"


def check_request(sampling_params: Any, params: dict[str, Any], vllm_config: Any) -> None:
    method = SPEC.name
    if sampling_params.temperature >= GREEDY_EPS:
        raise ValueError(f"temperature must be 0 with declab.method={method!r} (contrastive search is deterministic; "
                         f"got {sampling_params.temperature})")
    if getattr(sampling_params, "n", 1) != 1:
        raise ValueError(f"n must be 1 with declab.method={method!r} (got {sampling_params.n})")
    if sampling_params.logprobs is not None:
        raise ValueError(f"logprobs is not supported together with declab.method={method!r}: vLLM would report the "
                         "greedy token's, not the chosen candidate's")
    refuse_sampling_options(sampling_params, method, REFUSED_OPTIONS, REASON)
    spec_config = getattr(vllm_config, "speculative_config", None)
    if spec_config is None or getattr(spec_config, "model", None) != PROPOSER_PATH:
        raise ValueError(f"declab.method: {method!r} needs an engine whose speculative proposer is contrastive "
                         f"search: speculative_config={{'method': 'custom_class', 'model': '{PROPOSER_PATH}', "
                         "'num_speculative_tokens': K}")
    k = int(spec_config.num_speculative_tokens)
    if params["top_k"] > k:
        raise ValueError(f"declab.top_k must be <= {k} on this engine (its num_speculative_tokens), "
                         f"got {params['top_k']}")
    sampling_params.skip_reading_prefix_cache = True
