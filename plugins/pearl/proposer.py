"""vLLM 0.32 adapter: PEARL as a ``custom_class`` speculative proposer with a draft model of its own.

Usage, with ``DECLAB_PLUGINS`` including ``pearl``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.pearl.PearlProposer",
                        "num_speculative_tokens": 8}
    additional_config={"declab": {"pearl": {"window": 4, "draft_model": "/path/to/draft"}}}

Per step and request: ``PearlSchedule.reconcile`` keeps the window drafted ahead if the target's committed tokens
are its start (post-verify) or drops it (pre-verify); the draft then writes the next window (one packed draft
forward per position for the whole batch) and the chain handed to the target is the window written ahead
(post-verify) or the first new draft token (pre-verify). Chains are verified by vLLM's rejection sampler.
"""

from __future__ import annotations

import time

from declab.integrations.sdk.drafting import DraftModelProposer
from declab.integrations.sdk.proposer import TargetStep
from declab.plugins.pearl.core import POST, PRE, PearlSchedule
from declab.plugins.pearl.spec import SPEC


class PearlProposer(DraftModelProposer):
    spec = SPEC
    selected_as = "PEARL as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.window = int(self.settings["window"])
        if self.window > self.k:
            raise ValueError(f"pearl.window ({self.window}) must not exceed num_speculative_tokens ({self.k})")
        self.schedules: dict[str, PearlSchedule] = {}
        # draft_overlaps_verification: the GPU projection of `declab bench verify-cost` charges a step the longer of
        # draft and verification (PEARL's parallelism), with the serial cost beside it.
        self.stats.update({PRE + "_steps": 0, POST + "_steps": 0, "handed_over_tokens": 0, "window": self.window,
                           "draft_overlaps_verification": True})
        self.open_seams()

    def on_request_finish(self, req_id: str) -> None:
        super().on_request_finish(req_id)
        self.schedules.pop(req_id, None)

    def declab_bench_reset(self) -> None:
        super().declab_bench_reset()
        self.schedules.clear()
        for key in (PRE + "_steps", POST + "_steps", "handed_over_tokens"):
            self.stats[key] = 0

    def draft(self, step: TargetStep) -> list[list[int]]:
        started = time.perf_counter()
        drafts: list[list[int]] = [[] for _ in step.req_ids]
        rows = self.rows_to_draft(step)
        draft_limit = self.draft_model.config.max_position_embeddings
        plans = []
        for r in rows:
            schedule = self.schedules.setdefault(r.req_id, PearlSchedule(self.window))
            ahead = schedule.reconcile(step.sampled_token_ids[r.row])
            submit, count = schedule.plan(ahead, r.budget)
            context = r.context + submit
            plans.append((r, schedule, submit, context, min(count, draft_limit - len(context))))
            self.stats[PearlSchedule.mode(ahead) + "_steps"] += 1
        to_draft = [p for p in plans if p[4] >= 1]
        chains = self.draft_chains([p[0].req_id for p in to_draft], [p[3] for p in to_draft],
                                   [p[4] for p in to_draft]) if to_draft else []
        drafted = {id(p): c for p, c in zip(to_draft, chains)}
        for plan in plans:
            r, schedule, submit, _, _ = plan
            chain = schedule.hand_over(submit, drafted.get(id(plan), []))[: r.budget]
            drafts[r.row] = chain
            self.stats["handed_over_tokens"] += len(chain)
        self.count_propose(started)
        return drafts
