"""vLLM 0.32 adapter: EAD as a ``custom_class`` speculative proposer whose drafts are kept, not verified.

Usage, with ``DECLAB_PLUGINS`` including ``ead``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.ead.EADProposer",
                        "num_speculative_tokens": 8}
    additional_config={"declab": {"ead": {"threshold": 1.5, "window": 4}}}
    SamplingParams(extra_args={"declab": {"method": "ead", "entropy_threshold": 1.0}})  # per request (optional)

Per step and request, by the request's ``EntropySwitch`` (``core.py``):

* draft mode: the draft writes greedily (``draft_chains``), observing the entropy of its distribution at each
  position (``continue_drafting``); the position where the rolling entropy reaches the threshold is cut from the
  chain and the switch goes to target mode. The patch ``ead_accepts_drafts`` keeps the whole chain and appends the
  target's own token (vLLM's bonus token): the token at the cut, or the one after a full chain of K.
* target mode: no draft, so the step's one token is the target's; ``on_step`` observes the entropy of the target's
  logits row for it (``TargetStep.logits``) and the switch goes back to draft mode once the rolling entropy drops.

Target share = target-written tokens / tokens = engine steps per request / tokens (``stats``: ``target_tokens``,
``draft_tokens``). Threshold 0 never drafts: plain target decoding.
"""

from __future__ import annotations

import logging
import time

import torch

from declab.integrations.sdk import resolve_params
from declab.integrations.sdk.draft_model import DraftOutput
from declab.integrations.sdk.drafting import DraftModelProposer
from declab.integrations.sdk.proposer import TargetStep
from declab.plugins.ead.core import DRAFT, TARGET, EntropySwitch
from declab.plugins.ead.spec import SPEC

logger = logging.getLogger(__name__)

COUNTERS = ("draft_tokens", "target_tokens", "to_target", "to_draft", "cut_drafts")


def entropies(logits: torch.Tensor) -> list[float]:
    """Next-token entropy (nats) of each row of ``logits``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (-(logp.exp() * logp).sum(dim=-1)).tolist()


class EADProposer(DraftModelProposer):
    spec = SPEC
    selected_as = "EAD as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.threshold = float(self.settings["threshold"])
        self.window = int(self.settings["window"])
        self.switches: dict[str, EntropySwitch] = {}
        self._cut: set[str] = set()  # requests whose last drafted token crossed the threshold this step
        self.stats.update({key: 0 for key in COUNTERS})
        self.stats.update({"threshold": self.threshold, "window": self.window})
        self.open_seams()

    # -- per request ---------------------------------------------------------------------------------------------

    def request_threshold(self, params) -> float:
        """The request's ``entropy_threshold`` (``extra_args["declab"]`` or flat ``"declab.*"`` keys with method
        ``ead``; validated at admission), else the engine-wide one."""
        extra = getattr(params, "extra_args", None) or {}
        nested = extra.get("declab")
        args = dict(nested) if isinstance(nested, dict) else {k[len("declab."):]: v for k, v in extra.items()
                                                                if isinstance(k, str) and k.startswith("declab.")}
        if args.pop("method", None) != SPEC.name:
            return self.threshold
        try:
            given = resolve_params(SPEC.params, args)["entropy_threshold"]
        except ValueError as e:  # admission refused it already; never let a request kill the worker
            logger.warning("ead: request arguments ignored (%s); engine-wide threshold used", e)
            return self.threshold
        return self.threshold if given is None else float(given)

    def on_request_start(self, req_id: str, params) -> None:
        self.switches[req_id] = EntropySwitch(self.request_threshold(params), self.window)

    def on_request_finish(self, req_id: str) -> None:
        super().on_request_finish(req_id)
        self.switches.pop(req_id, None)

    # -- per step ------------------------------------------------------------------------------------------------

    def on_step(self, step: TargetStep) -> None:
        """Count who wrote this step's tokens; in target mode, observe the target's entropy at its token (the last
        logits row of the request: its last scheduled token, then one row per kept draft token)."""
        rows, last_rows = 0, []
        for drafts in step.verified_drafts:
            rows += 1 + len(drafts)
            last_rows.append(rows - 1)
        if step.logits is not None and step.logits.shape[0] != rows:
            logger.warning("ead: %d logits rows for %d expected; target entropies of this step skipped",
                           step.logits.shape[0], rows)
            return
        observe = [i for i, (req_id, new) in enumerate(zip(step.req_ids, step.sampled_token_ids))
                   if new and req_id in self.switches]
        for i in observe:
            drafted, by_target = self.kept_tokens(step, i)
            self.stats["draft_tokens"] += drafted
            self.stats["target_tokens"] += by_target
        targets = [i for i in observe if self.switches[step.req_ids[i]].mode == TARGET]
        if not targets or step.logits is None:
            return
        for i, e in zip(targets, entropies(step.logits[[last_rows[i] for i in targets]])):
            if self.switches[step.req_ids[i]].observe(e) == DRAFT:
                self.stats["to_draft"] += 1

    def kept_tokens(self, step: TargetStep, i: int) -> tuple[int, int]:
        """(draft-written, target-written) tokens of row ``i`` this step that the request keeps: its drafts then
        the target's token, cut at ``max_tokens`` and after a stop token (the runner holds a step's tokens before
        the scheduler trims them)."""
        new = step.sampled_token_ids[i]
        params = self.request_params.get(step.req_ids[i])
        keep = len(new)
        if params is not None:
            state = step.runner.requests.get(step.req_ids[i])
            if state is not None and params.max_tokens is not None:
                before = int(step.num_tokens_no_spec[i]) - len(new) - int(state.num_prompt_tokens)
                keep = max(0, min(keep, int(params.max_tokens) - before))
            stops = set() if params.ignore_eos else set(getattr(params, "all_stop_token_ids", ()) or ())
            keep = next((j + 1 for j, t in enumerate(new[:keep]) if t in stops), keep)
        drafted = min(keep, len(new) - 1)
        return drafted, keep - drafted

    def continue_drafting(self, req_ids: list[str], position: int, out: DraftOutput,
                          tokens: torch.Tensor) -> torch.Tensor:
        go_on = []
        for req_id, e in zip(req_ids, entropies(out.logits)):
            if self.switches[req_id].observe(e) == TARGET:
                self._cut.add(req_id)  # this position is the target's: the draft's token is dropped
                self.stats["to_target"] += 1
                go_on.append(False)
            else:
                go_on.append(True)
        return torch.tensor(go_on, dtype=torch.bool)

    def draft(self, step: TargetStep) -> list[list[int]]:
        started = time.perf_counter()
        drafts: list[list[int]] = [[] for _ in step.req_ids]
        rows = [r for r in self.rows_to_draft(step) if self.switches[r.req_id].mode == DRAFT]
        if rows:
            self._cut.clear()
            chains = self.draft_chains([r.req_id for r in rows], [r.context for r in rows], [r.budget for r in rows])
            for r, chain in zip(rows, chains):
                if r.req_id in self._cut:
                    chain = chain[:-1]
                    self.stats["cut_drafts"] += 1
                drafts[r.row] = chain
        self.count_propose(started)
        return drafts

    # -- benchmark hooks -----------------------------------------------------------------------------------------

    def declab_bench_reset(self) -> None:
        super().declab_bench_reset()
        for key in COUNTERS:
            self.stats[key] = 0
