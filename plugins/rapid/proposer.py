"""vLLM 0.32 adapter: RAPID as a ``custom_class`` speculative proposer (lossless variant).

Usage, with ``DECLAB_PLUGINS`` including ``rapid``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.rapid.RapidProposer",
                        "num_speculative_tokens": 4}
    additional_config={"declab": {"rapid": {"context_tokens": 256}}}

The draft reads ``shorten_context(prompt) + generated tokens`` (computed once per request from the runner's prompt
token ids); the target reads the full prompt and verifies with vLLM's rejection sampler, so outputs are the target's.
With ``keep_positions`` the draft reads each kept prompt token at its position in the prompt (``core.kept_indices``)
and the generated tokens at theirs, as the target does; otherwise at 0, 1, ... of the shortened context.
"""

from __future__ import annotations

import numpy as np

from declab.integrations.sdk.drafting import DraftModelProposer
from declab.plugins.rapid.core import kept_indices
from declab.plugins.rapid.spec import SPEC


class RapidProposer(DraftModelProposer):
    spec = SPEC
    selected_as = "RAPID as the speculative proposer"
    cut_drafts_at_max_tokens = True

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.budget = int(self.settings["context_tokens"])
        self.query_tokens = int(self.settings["query_tokens"])
        self.chunk_tokens = int(self.settings["chunk_tokens"])
        self.keep_positions = bool(self.settings["keep_positions"])
        # request -> (prompt length, the kept prompt indices, the draft's prompt)
        self._short_prompts: dict[str, tuple[int, list[int], list[int]]] = {}
        self.stats.update({"context_tokens": self.budget, "keep_positions": self.keep_positions, "prompt_tokens": 0,
                           "draft_prompt_tokens": 0})
        self.open_seams()

    def draft_context(self, req_id: str, committed: np.ndarray) -> list[int]:
        if req_id not in self._short_prompts:
            n_prompt = int(self.runner.requests[req_id].num_prompt_tokens)
            prompt = committed[:n_prompt].tolist()
            kept = kept_indices(prompt, budget=self.budget, query_tokens=self.query_tokens,
                                chunk_tokens=self.chunk_tokens)
            self._short_prompts[req_id] = (n_prompt, kept, [prompt[i] for i in kept])
            self.stats["prompt_tokens"] += n_prompt
            self.stats["draft_prompt_tokens"] += len(kept)
        n_prompt, _, short = self._short_prompts[req_id]
        return short + committed[n_prompt:].tolist()

    def draft_anchor_positions(self, req_id: str) -> list[int]:
        # The generated tokens follow the last kept prompt token (the prompt's last) one by one, as in the target.
        return self._short_prompts[req_id][1] if self.keep_positions else []

    def on_request_finish(self, req_id: str) -> None:
        super().on_request_finish(req_id)
        self._short_prompts.pop(req_id, None)

    def declab_bench_reset(self) -> None:
        super().declab_bench_reset()
        self._short_prompts.clear()
        self.stats["prompt_tokens"] = self.stats["draft_prompt_tokens"] = 0
