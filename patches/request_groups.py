"""Request-group seam: companion rows decoded in lockstep with a request inside the same batch, invisible to the
client. Any plugin whose ``LogitsHook.companions`` names companion prompts gets one hidden row per prompt (today the
contrastive family: CAD, LQCD, M3ID, and classifier-free guidance); the seam knows no plugin.

Why: such methods need, at every step, the logits of the same model on further prompts (without the context, with a
neutral query, without the image, an unconditional prompt). vLLM 0.32 has no hook for a second conditioned forward
pass (its classifier-free-guidance requests were closed unresolved), and a second request sent by the client would
be scheduled independently: its prefill ends in a different step, it can be preempted alone, and nothing keeps its
tokens equal to the main request's.

How (``vllm.v1.core.sched.scheduler.Scheduler``, engine-core process):

* ``add_request``: for a request whose ``extra_args`` name a method with companions, build one companion ``Request``
  per companion prompt (tokenized at admission by ``prompt_rendering``) and enqueue them right after the main one,
  so all share the scheduler, the KV cache and the prefix cache. The main request's own sampling settings move into
  ``extra_args`` (the group's processor samples with them); the engine then decodes every row greedily over the
  one-hot row the router leaves, so none needs an engine RNG.
* ``schedule``: a group member that would sample a token while a partner cannot (partner waiting or preempted, or
  still prefilling) is held for the step with vLLM's own per-request skip (``next_decode_eligible_step``). If a step
  ends with nothing scheduled while held members wait for partners that cannot be admitted, a held member is
  preempted so its blocks go back to the pool (no deadlock under KV pressure).
* ``update_from_output``: a step counts for a group only if every member sampled at the same position and got the
  same (forced) token. Otherwise the tokens of the members that sampled are dropped before vLLM sees them and their
  ``num_computed_tokens`` goes back by one, so that position is recomputed when the group is aligned again; the
  runner trims its cached copy from ``num_output_tokens`` (the path vLLM uses for failed KV loads). Companion
  outputs never leave the engine core.
* ``finish_requests`` / end of ``update_from_output``: a finished or aborted main request takes its companions with
  it (blocks freed in the same step); a companion never outlives its main request.
* ``make_stats``: the engine step's ``SchedulerStats`` carries the companion rows in the running and waiting queues
  (``SchedulerStats.declab``, a field ``plugin_stats`` adds), for ``declab:companion_rows_running`` / ``_waiting``
  on ``/metrics``: vLLM's own ``num_requests_running`` / ``num_requests_waiting`` count companion rows too.

vLLM version: 0.32.0 (``vllm/v1/core/sched/scheduler.py``; synchronous scheduling: the engine-args seam turns async
scheduling off when a plugin with companions is selected; CPU never uses it).

Removal plan: replace by a native "request group" / CFG scheduling primitive if vLLM grows one (track the
classifier-free-guidance RFCs); until then re-check ``schedule``, ``update_from_output``, ``_preempt_request``,
``next_decode_eligible_step`` and the runner's ``num_output_tokens`` trim on every vLLM bump
(the contrastive engine tests exercise preemption, aborts and mixed batches).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from declab.integrations.sdk import DeclabPatch

logger = logging.getLogger("declab")

COMPANION_MARK = "::declab-companion-"


def companion_id(main_id: str, role: str) -> str:
    return f"{main_id}{COMPANION_MARK}{role}"


class _GroupBook:
    """Which requests are grouped, per scheduler instance."""

    def __init__(self) -> None:
        self.companions_of: dict[str, list[str]] = {}  # main id -> companion ids
        self.main_of: dict[str, str] = {}  # companion id -> main id
        self.rollbacks = 0  # steps dropped because the group was not aligned (for stats / tests)
        self.deadlock_breaks = 0

    def add(self, main_id: str, companion_ids: list[str]) -> None:
        self.companions_of[main_id] = companion_ids
        for comp in companion_ids:
            self.main_of[comp] = main_id

    def members(self, req_id: str) -> list[str] | None:
        """Every member of ``req_id``'s group, main first; None if it is in no group."""
        main_id = self.main_of.get(req_id, req_id)
        comps = self.companions_of.get(main_id)
        return None if comps is None else [main_id, *comps]

    def forget(self, main_id: str) -> None:
        for comp in self.companions_of.pop(main_id, ()):
            self.main_of.pop(comp, None)

    def __bool__(self) -> bool:
        return bool(self.companions_of)


def _book(scheduler: Any) -> _GroupBook:
    book = scheduler.__dict__.get("_declab_groups")
    if book is None:
        book = scheduler._declab_groups = _GroupBook()
    return book


def _group_request(request: Any):
    """The parsed declab arguments if ``request`` asks for a method with companion rows, else None."""
    sp = request.sampling_params
    if sp is None or not sp.extra_args:
        return None
    from declab.integrations.request_args import parse_request_args
    from declab.integrations.sdk.groups import GROUP_KEY

    if GROUP_KEY in sp.extra_args:  # already grouped (a companion, or a re-added request)
        return None
    parsed = parse_request_args(sp.extra_args)
    if parsed is None or not parsed.spec.logits.companions:
        return None
    return parsed


def _companion_ids(scheduler: Any, request: Any, parsed: Any) -> dict[str, list[int]]:
    """Token ids of each companion prompt: tokenized at admission by ``prompt_rendering``; requests that reach the
    engine core without passing vLLM's input processor are tokenized here, the same way."""
    from declab.integrations.sdk.groups import COMPANION_IDS_KEY

    ids = request.sampling_params.extra_args.get(COMPANION_IDS_KEY)
    if ids is not None:
        return {name: list(v) for name, v in ids.items()}
    tokenizer = scheduler.__dict__.get("_declab_tokenizer")
    if tokenizer is None:
        from vllm.tokenizers import get_tokenizer

        mc = scheduler.vllm_config.model_config
        tokenizer = get_tokenizer(mc.tokenizer, trust_remote_code=mc.trust_remote_code, revision=mc.tokenizer_revision)
        scheduler._declab_tokenizer = tokenizer
    from declab.integrations.sdk.groups import companion_prompt_ids

    hook = parsed.spec.logits
    return {name: companion_prompt_ids(list(tokenizer.encode(parsed.params[name])), request.prompt_token_ids,
                                       hook.empty_companion) for name in hook.companions}


def _greedy_copy(sp: Any, extra_args: dict[str, Any]) -> Any:
    from vllm import SamplingParams

    new = sp.clone()
    new.temperature = 0.0
    new.top_p = 1.0
    new.top_k = 0
    new.min_p = 0.0
    new.seed = None
    new.extra_args = extra_args
    new.__dict__.pop("sampling_type", None)  # cached_property computed from temperature/seed
    assert isinstance(new, SamplingParams)
    return new


def _make_group(request: Any, prompts: dict[str, list[int]]) -> list[Any]:
    """Turn ``request`` into the main member of a group and return its companion ``Request``s."""
    from vllm.v1.request import Request

    from declab.integrations.sdk.groups import COMPANION_IDS_KEY, GROUP_KEY, ROLE_MAIN
    from declab.integrations.sdk.sampling import SamplingSettings

    sp = request.sampling_params
    extra = dict(sp.extra_args)
    extra.pop(COMPANION_IDS_KEY, None)
    settings = SamplingSettings.from_sampling_params(sp)
    main_id = request.request_id
    main_extra = dict(extra)
    main_extra[GROUP_KEY] = {"id": main_id, "role": ROLE_MAIN, "sampling": settings.to_dict()}
    request.sampling_params = _greedy_copy(sp, main_extra)

    companions = []
    for role, prompt_ids in prompts.items():
        comp_extra = dict(extra)
        comp_extra[GROUP_KEY] = {"id": main_id, "role": role}
        comp_sp = _greedy_copy(sp, comp_extra)
        # A companion only feeds logits: no stop conditions of its own (it ends with its main request), no logprobs.
        comp_sp.ignore_eos = True
        comp_sp.stop = []
        comp_sp.stop_token_ids = []
        comp_sp.logprobs = None
        comp_sp.prompt_logprobs = None
        comp_sp.__dict__.pop("all_stop_token_ids", None)
        if hasattr(comp_sp, "_all_stop_token_ids"):
            comp_sp._all_stop_token_ids = set()
        companions.append(Request(
            request_id=companion_id(main_id, role),
            prompt_token_ids=prompt_ids,
            sampling_params=comp_sp,
            pooling_params=None,
            client_index=request.client_index,
            arrival_time=request.arrival_time,
            lora_request=request.lora_request,
            cache_salt=request.cache_salt,
            priority=request.priority,
            block_hasher=request._block_hasher,
        ))
    return companions


class RequestGroupsPatch(DeclabPatch):
    name = "request_groups"
    target = "vllm.v1.core.sched.scheduler:Scheduler"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from vllm.v1.request import RequestStatus

        orig_add = target.add_request
        orig_schedule = target.schedule
        orig_update = target.update_from_output
        orig_finish = target.finish_requests
        orig_make_stats = target.make_stats

        def add_request(self, request) -> None:
            parsed = _group_request(request)
            if parsed is None:
                return orig_add(self, request)
            companions = _make_group(request, _companion_ids(self, request, parsed))
            _book(self).add(request.request_id, [c.request_id for c in companions])
            orig_add(self, request)
            for companion in companions:
                orig_add(self, companion)

        def schedule(self, *args, **kwargs):
            book = _book(self)
            if not book:
                return orig_schedule(self, *args, **kwargs)
            held = _hold_unaligned(self, book, RequestStatus)
            output = orig_schedule(self, *args, **kwargs)
            if held and output.total_num_scheduled_tokens == 0:
                _break_deadlock(self, book, held, RequestStatus)
            return output

        def update_from_output(self, scheduler_output, model_runner_output):
            book = _book(self)
            if not book:
                return orig_update(self, scheduler_output, model_runner_output)
            dropped = _drop_unaligned_tokens(self, book, scheduler_output, model_runner_output)
            outputs = orig_update(self, scheduler_output, model_runner_output)
            for request in dropped:
                if request.status == RequestStatus.RUNNING:
                    # Recompute the last input position next time: it is where the group samples together.
                    request.num_computed_tokens -= 1
                    request.is_prefill_chunk = True
            _end_orphans(self, book, outputs, RequestStatus)
            _hide_companions(book, outputs)
            return outputs

        def finish_requests(self, request_ids, finished_status):
            book = _book(self)
            if book and request_ids is not None:
                ids = (request_ids,) if isinstance(request_ids, str) else list(request_ids)
                companions = [c for i in ids for c in book.companions_of.get(i, ())]
                if companions:
                    request_ids = ids + companions
            finished = orig_finish(self, request_ids, finished_status)
            if book:
                for request in finished:
                    book.forget(request.request_id)
            return finished

        def make_stats(self, *args, **kwargs):
            stats = orig_make_stats(self, *args, **kwargs)
            if stats is not None:
                stats.declab = companion_row_counts(self)
            return stats

        return {
            "add_request": add_request,
            "schedule": schedule,
            "update_from_output": update_from_output,
            "finish_requests": finish_requests,
            "make_stats": make_stats,
        }


def companion_row_counts(scheduler: Any) -> dict[str, int]:
    """Companion rows in the queues vLLM's ``num_requests_running`` / ``num_requests_waiting`` count
    (``Scheduler.get_request_counts``), for ``declab:companion_rows_running`` / ``_waiting``."""
    waiting = (r for queue in (scheduler.waiting, scheduler.kv_holding_waiting) for r in queue)
    return {
        "companion_rows_running": sum(_is_companion(r.request_id) for r in scheduler.running),
        "companion_rows_waiting": sum(_is_companion(r.request_id) for r in waiting),
    }


def _remaining(request: Any) -> int:
    return request.num_tokens - request.num_computed_tokens


def _hold_unaligned(scheduler: Any, book: _GroupBook, status: Any) -> list[Any]:
    """Skip, for the coming step, group members that would sample without all their partners."""
    held = []
    coming_step = scheduler.current_step + 1  # schedule() increments current_step first
    for main_id, comp_ids in book.companions_of.items():
        members = [scheduler.requests.get(i) for i in (main_id, *comp_ids)]
        if any(m is None for m in members):
            continue
        for x in members:
            if x.status != status.RUNNING:
                continue
            partners = [y for y in members if y is not x]
            partner_not_running = any(y.status != status.RUNNING for y in partners)
            # x is one token from sampling while a partner still has a prompt (or recomputation) to work through.
            x_would_sample_alone = _remaining(x) <= 1 and any(_remaining(y) > 1 for y in partners)
            if partner_not_running or x_would_sample_alone:
                x.next_decode_eligible_step = coming_step + 1
                held.append(x)
    return held


def _break_deadlock(scheduler: Any, book: _GroupBook, held: list[Any], status: Any) -> None:
    """Nothing ran: free the blocks of one held member whose partner is stuck in the waiting queue."""
    for x in reversed(held):
        if x.status != status.RUNNING:
            continue
        partners = [scheduler.requests.get(i) for i in book.members(x.request_id) or () if i != x.request_id]
        if any(p is not None and p.status != status.RUNNING for p in partners):
            scheduler.running = [r for r in scheduler.running if r is not x]
            scheduler._preempt_request(x, time.monotonic())
            book.deadlock_breaks += 1
            logger.debug("declab: preempted held %s so that its group can be admitted", x.request_id)
            return


def _drop_unaligned_tokens(scheduler: Any, book: _GroupBook, scheduler_output: Any, runner_output: Any) -> list[Any]:
    """Empty the sampled tokens of group members that did not sample together with all their partners this step."""
    sampled = runner_output.sampled_token_ids
    index = runner_output.req_id_to_index
    if not sampled:
        return []
    scheduled = scheduler_output.num_scheduled_tokens
    dropped = []
    seen: set[str] = set()
    for req_id in scheduled:
        member_ids = book.members(req_id)
        if member_ids is None or member_ids[0] in seen:
            continue
        seen.add(member_ids[0])
        requests = [scheduler.requests.get(i) for i in member_ids]
        tokens = [list(sampled[index[i]]) if i in scheduled and i in index else [] for i in member_ids]
        aligned = (
            all(r is not None for r in requests)
            and len(tokens[0]) > 0
            and all(t == tokens[0] for t in tokens)
            and len({r.num_output_tokens for r in requests}) == 1
        )
        if aligned:
            continue
        for rid, toks, request in zip(member_ids, tokens, requests):
            if len(toks) > 0 and request is not None:
                sampled[index[rid]] = []
                dropped.append(request)
        if dropped:
            book.rollbacks += 1
    return dropped


def _end_orphans(scheduler: Any, book: _GroupBook, outputs: dict, status: Any) -> None:
    """A main request that finished this step takes its companions along; a companion that ended on its own (it
    should not: its limits are the main request's) ends the main request with an abort."""
    for main_id, comp_ids in list(book.companions_of.items()):
        main = scheduler.requests.get(main_id)
        main_done = main is None or main.is_finished()
        comps_done = [c for c in comp_ids if (r := scheduler.requests.get(c)) is None or r.is_finished()]
        if main_done:
            for comp_id in comp_ids:
                if comp_id not in comps_done:
                    scheduler.finish_requests(comp_id, status.FINISHED_ABORTED)
            book.forget(main_id)
        elif comps_done:
            logger.error("declab: a companion of %s ended first; aborting the request", main_id)
            from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs

            for request in scheduler.finish_requests(main_id, status.FINISHED_ABORTED):
                client = outputs.setdefault(request.client_index, EngineCoreOutputs())
                client.outputs.append(
                    EngineCoreOutput(
                        request_id=request.request_id,
                        new_token_ids=[],
                        finish_reason=request.get_finished_reason(),
                    )
                )


def _is_companion(request_id: str) -> bool:
    return COMPANION_MARK in request_id


def _hide_companions(book: _GroupBook, outputs: dict) -> None:
    for client_outputs in outputs.values():
        kept = [o for o in client_outputs.outputs if not _is_companion(o.request_id)]
        if len(kept) != len(client_outputs.outputs):
            client_outputs.outputs = kept
        finished = getattr(client_outputs, "finished_requests", None)
        if finished:
            client_outputs.finished_requests = {r for r in finished if not _is_companion(r)}
