"""vLLM 0.32 adapter: RAPID as a ``custom_class`` speculative proposer (lossless variant).

Usage, with ``DECLAB_PLUGINS`` including ``rapid``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.rapid.RapidProposer",
                        "num_speculative_tokens": 4}
    additional_config={"declab": {"rapid": {"context_tokens": 256}}}

The draft reads ``shorten_context(prompt) + generated tokens`` (computed once per request from the runner's prompt
token ids); the target reads the full prompt and verifies with vLLM's rejection sampler, so outputs are the target's.
"""

from __future__ import annotations

import numpy as np

from declab.integrations.sdk.drafting import DraftModelProposer
from declab.plugins.rapid.core import shorten_context
from declab.plugins.rapid.spec import SPEC


class RapidProposer(DraftModelProposer):
    spec = SPEC
    selected_as = "RAPID as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.budget = int(self.settings["context_tokens"])
        self.query_tokens = int(self.settings["query_tokens"])
        self.chunk_tokens = int(self.settings["chunk_tokens"])
        self._short_prompts: dict[str, tuple[int, list[int]]] = {}  # request -> (prompt length, draft's prompt)
        self.stats.update({"context_tokens": self.budget, "prompt_tokens": 0, "draft_prompt_tokens": 0})
        self.open_seams()

    def draft_context(self, req_id: str, committed: np.ndarray) -> list[int]:
        if req_id not in self._short_prompts:
            n_prompt = int(self.runner.requests[req_id].num_prompt_tokens)
            short = shorten_context(committed[:n_prompt].tolist(), budget=self.budget,
                                    query_tokens=self.query_tokens, chunk_tokens=self.chunk_tokens)
            self._short_prompts[req_id] = (n_prompt, short)
            self.stats["prompt_tokens"] += n_prompt
            self.stats["draft_prompt_tokens"] += len(short)
        n_prompt, short = self._short_prompts[req_id]
        return short + committed[n_prompt:].tolist()

    def on_request_finish(self, req_id: str) -> None:
        super().on_request_finish(req_id)
        self._short_prompts.pop(req_id, None)

    def declab_bench_reset(self) -> None:
        super().declab_bench_reset()
        self._short_prompts.clear()
        self.stats["prompt_tokens"] = self.stats["draft_prompt_tokens"] = 0
