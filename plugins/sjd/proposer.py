"""vLLM 0.32 adapter: SJD as a ``custom_class`` speculative proposer (V1 model runner).

Usage, with ``DECLAB_PLUGINS`` including ``sjd``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.sjd.SJDProposer",
                        "num_speculative_tokens": 4}

Per step: ``on_step`` keeps, per request, the target's logits at the positions past its accepted prefix (the
previous Jacobi iteration; ``core.JacobiWindow.carry``); ``draft`` draws each request's next window from them at the
request's temperature (greedy: argmax) and fills new positions with random tokens. The distributions the drafts were
drawn from are handed to vLLM's rejection sampler as ``runner._draft_probs`` / ``runner._draft_prob_req_ids``
(``[rows, K, V]``; vLLM 0.32 reads them for ``custom_class`` drafters, ``gpu_model_runner._get_spec_decode_draft_probs``),
so it accepts with ``min(1, p/q)`` and resamples from the residual: sampling keeps the target distribution, greedy is
token-identical to plain decoding. On CPU the sampler needs the ``cpu_expand_kernel`` patch (applied when the plugin
is selected).

``biased`` (a test-only attribute, no setting): the drafts are drawn as above but a uniform distribution is reported
for them, so the sampler accepts with ``min(1, p/uniform)`` (almost always): a deliberately wrong acceptance rule the
statistical test must catch.
"""

from __future__ import annotations

import time

import torch

from declab.integrations.sdk.proposer import DeclabProposer, TargetStep
from declab.plugins.shared.recycled_successors import recycled_inputs
from declab.plugins.sjd.core import JacobiWindow
from declab.plugins.sjd.spec import SPEC

GREEDY_EPS = 1e-5  # vLLM's greedy threshold
PHASE_COUNTERS = ("windows", "stale_tokens", "random_tokens")


class SJDProposer(DeclabProposer):
    spec = SPEC
    selected_as = "SJD as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.k = self.chain_length()
        self.init = self.settings["init"]
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self.windows: dict[str, JacobiWindow] = {}
        self.generator = torch.Generator().manual_seed(int(getattr(vllm_config.model_config, "seed", 0) or 0))
        self.biased = False
        self.init_stats(PHASE_COUNTERS)
        self.open_seams()

    def on_request_start(self, req_id: str, params) -> None:
        self.windows[req_id] = JacobiWindow(self.vocab_size)

    def on_request_finish(self, req_id: str) -> None:
        self.windows.pop(req_id, None)

    def on_step(self, step: TargetStep) -> None:
        if step.logits is None:
            return
        _, spans = recycled_inputs(step)  # (request, first row, end row) of every request that committed tokens
        accepted = {step.req_ids[i]: len(new) - 1 for i, new in enumerate(step.sampled_token_ids) if new}
        for req_id, start, end in spans:
            window = self.windows.get(req_id)
            if window is not None:
                window.carry(step.logits[start:end], accepted[req_id])

    def _temperature(self, req_id: str) -> float:
        params = self.request_params.get(req_id)
        t = float(getattr(params, "temperature", 0.0) or 0.0)
        return t if t >= GREEDY_EPS else 0.0

    def draft(self, step: TargetStep) -> list[list[int]]:
        started = time.perf_counter()
        drafts: list[list[int]] = [[] for _ in step.sampled_token_ids]
        probs = torch.zeros((len(drafts), self.k, self.vocab_size))
        for i, new in enumerate(step.sampled_token_ids):
            req_id = step.req_ids[i]
            window = self.windows.get(req_id)
            if not new or window is None:
                continue
            temperature = self._temperature(req_id)
            stale = min(self.k, window.stale.shape[0])
            tokens, q = window.draw(self.k, temperature, self.generator, self.init)
            if self.biased:  # test-only: the wrong q (see the module docstring)
                q = torch.full_like(q, 1.0 / self.vocab_size)
            drafts[i], probs[i] = tokens, q
            self.stats["windows"] += 1
            self.stats["stale_tokens"] += stale
            self.stats["random_tokens"] += self.k - stale
        runner = step.runner
        runner._draft_probs = probs.to(device=getattr(runner, "device", "cpu"))  # noqa: SLF001 (vLLM's documented slot)
        runner._draft_prob_req_ids = list(step.req_ids)  # noqa: SLF001
        self.count_propose(started)
        return drafts

    def declab_bench_reset(self) -> None:
        self.reset_phase_counters()

    def declab_bench_memory(self) -> dict:
        live = sum(w.stale.numel() * w.stale.element_size() for w in self.windows.values())
        return {"proposer_bytes": live + self.k * self.vocab_size * 4 * max(1, len(self.windows)),
                "what": "per request: the previous iteration's logits past the accepted prefix; the step's draft "
                        "distributions [rows, K, V] handed to the rejection sampler"}
