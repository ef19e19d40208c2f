"""Companion rows for contrastive decoding (CAD, LQCD, M3ID): a second engine request per contrastive request,
decoded in lockstep with it inside the same batch, invisible to the client.

Why: contrastive methods need, at every step, the logits of the same model on a second prompt (without the context,
with a neutral query, without the image). vLLM 0.32 has no hook for a second conditioned forward pass (its
classifier-free-guidance requests were closed unresolved), and a second request sent by the client would be
scheduled independently: its prefill ends in a different step, it can be preempted alone, and nothing keeps its
tokens equal to the main request's.

How (``vllm.v1.core.sched.scheduler.Scheduler``, engine-core process):

* ``add_request``: for a request whose ``extra_args`` name a contrastive method, build the companion ``Request``
  (prompt = ``contrast_prompt`` tokenized at admission by ``contrast_prompt_tokens``) and enqueue it right after
  the main one, so both share the scheduler, the KV cache and the prefix cache. The main request's own sampling
  settings move into ``extra_args`` (the router samples from the contrasted logits with them); the engine then
  decodes both rows greedily over the one-hot row the router leaves, so neither needs an engine RNG.
* ``schedule``: a pair member that would sample a token while its partner cannot (partner waiting or preempted,
  or still prefilling) is held for the step with vLLM's own per-request skip (``next_decode_eligible_step``).
  If a step ends with nothing scheduled while held members wait for partners that cannot be admitted, the held
  member is preempted so its blocks go back to the pool (no deadlock under KV pressure).
* ``update_from_output``: a step counts for a pair only if both members sampled at the same position and got the
  same (forced) token. Otherwise the token of the member that sampled alone is dropped before vLLM sees it and its
  ``num_computed_tokens`` goes back by one, so that position is recomputed when the pair is aligned again; the
  runner trims its cached copy from ``num_output_tokens`` (the path vLLM uses for failed KV loads). Companion
  outputs never leave the engine core.
* ``finish_requests`` / end of ``update_from_output``: a finished or aborted main request takes its companion
  with it (blocks freed in the same step); a companion never outlives its main request.

vLLM version: 0.32.0 (``vllm/v1/core/sched/scheduler.py``; synchronous scheduling: the entry point turns async
scheduling off when a contrastive plugin is selected; CPU never uses it).

Removal plan: replace by a native "request group" / CFG scheduling primitive if vLLM grows one (track the
classifier-free-guidance RFCs); until then re-check ``schedule``, ``update_from_output``, ``_preempt_request``,
``next_decode_eligible_step`` and the runner's ``num_output_tokens`` trim on every vLLM bump
(``tests/test_contrastive_engine.py`` exercises preemption, aborts and mixed batches).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from declab.patches import DeclabPatch

logger = logging.getLogger("declab")

COMPANION_SUFFIX = "::declab-contrast"


def companion_id(main_id: str) -> str:
    return main_id + COMPANION_SUFFIX


class _PairBook:
    """Which requests are paired, per scheduler instance."""

    def __init__(self) -> None:
        self.companion_of: dict[str, str] = {}  # main id -> companion id
        self.main_of: dict[str, str] = {}  # companion id -> main id
        self.rollbacks = 0  # steps dropped because the pair was not aligned (for stats / tests)
        self.deadlock_breaks = 0

    def partner(self, req_id: str) -> str | None:
        return self.companion_of.get(req_id) or self.main_of.get(req_id)

    def forget(self, main_id: str) -> None:
        comp = self.companion_of.pop(main_id, None)
        if comp is not None:
            self.main_of.pop(comp, None)

    def __bool__(self) -> bool:
        return bool(self.companion_of)


def _book(scheduler: Any) -> _PairBook:
    book = scheduler.__dict__.get("_declab_pairs")
    if book is None:
        book = scheduler._declab_pairs = _PairBook()
    return book


def _contrastive_request(request: Any):
    """The parsed declab arguments if ``request`` asks for a contrastive method, else None."""
    sp = request.sampling_params
    if sp is None or not sp.extra_args:
        return None
    from declab.integrations.request_args import parse_request_args
    from declab.plugins.shared.contrastive_args import PAIR_KEY, is_contrastive

    if PAIR_KEY in sp.extra_args:  # already paired (a companion, or a re-added request)
        return None
    parsed = parse_request_args(sp.extra_args)
    if parsed is None or not is_contrastive(parsed.spec):
        return None
    return parsed


def _contrast_ids(scheduler: Any, request: Any, parsed: Any) -> list[int]:
    """Token ids of the contrast prompt: tokenized at admission by ``contrast_prompt_tokens``; requests that reach
    the engine core without passing vLLM's input processor are tokenized here, the same way."""
    from declab.plugins.shared.contrastive_args import CONTRAST_IDS_KEY

    ids = request.sampling_params.extra_args.get(CONTRAST_IDS_KEY)
    if ids is not None:
        return list(ids)
    tokenizer = scheduler.__dict__.get("_declab_tokenizer")
    if tokenizer is None:
        from vllm.tokenizers import get_tokenizer

        mc = scheduler.vllm_config.model_config
        tokenizer = get_tokenizer(mc.tokenizer, trust_remote_code=mc.trust_remote_code, revision=mc.tokenizer_revision)
        scheduler._declab_tokenizer = tokenizer
    return list(tokenizer.encode(parsed.params["contrast_prompt"]))


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


def _make_pair(request: Any, contrast_ids: list[int]) -> Any:
    """Turn ``request`` into the main member of a pair and return its companion ``Request``."""
    from vllm.v1.request import Request

    from declab.plugins.shared.contrastive_args import CONTRAST_IDS_KEY, PAIR_KEY, ROLE_CONTRAST, ROLE_MAIN, SamplingSettings

    sp = request.sampling_params
    extra = dict(sp.extra_args)
    extra.pop(CONTRAST_IDS_KEY, None)
    settings = SamplingSettings(
        temperature=float(sp.temperature), top_k=int(sp.top_k or 0), top_p=float(sp.top_p),
        min_p=float(sp.min_p), seed=sp.seed,
    )
    main_id = request.request_id
    main_extra = dict(extra)
    main_extra[PAIR_KEY] = {"id": main_id, "role": ROLE_MAIN, "sampling": settings.to_dict()}
    request.sampling_params = _greedy_copy(sp, main_extra)

    comp_extra = dict(extra)
    comp_extra[PAIR_KEY] = {"id": main_id, "role": ROLE_CONTRAST}
    comp_sp = _greedy_copy(sp, comp_extra)
    # The companion only feeds logits: no stop conditions of its own (it ends with its main request), no logprobs.
    comp_sp.ignore_eos = True
    comp_sp.stop = []
    comp_sp.stop_token_ids = []
    comp_sp.logprobs = None
    comp_sp.prompt_logprobs = None
    comp_sp.__dict__.pop("all_stop_token_ids", None)
    if hasattr(comp_sp, "_all_stop_token_ids"):
        comp_sp._all_stop_token_ids = set()
    return Request(
        request_id=companion_id(main_id),
        prompt_token_ids=contrast_ids,
        sampling_params=comp_sp,
        pooling_params=None,
        client_index=request.client_index,
        arrival_time=request.arrival_time,
        lora_request=request.lora_request,
        cache_salt=request.cache_salt,
        priority=request.priority,
        block_hasher=request._block_hasher,
    )


class ContrastivePairsPatch(DeclabPatch):
    name = "contrastive_pairs"
    target = "vllm.v1.core.sched.scheduler:Scheduler"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from vllm.v1.request import RequestStatus

        orig_add = target.add_request
        orig_schedule = target.schedule
        orig_update = target.update_from_output
        orig_finish = target.finish_requests

        def add_request(self, request) -> None:
            parsed = _contrastive_request(request)
            if parsed is None:
                return orig_add(self, request)
            companion = _make_pair(request, _contrast_ids(self, request, parsed))
            book = _book(self)
            book.companion_of[request.request_id] = companion.request_id
            book.main_of[companion.request_id] = request.request_id
            orig_add(self, request)
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
                    # Recompute the last input position next time: it is where the pair samples together.
                    request.num_computed_tokens -= 1
                    request.is_prefill_chunk = True
            _end_orphans(self, book, outputs, RequestStatus)
            _hide_companions(book, outputs)
            return outputs

        def finish_requests(self, request_ids, finished_status):
            book = _book(self)
            if book and request_ids is not None:
                ids = (request_ids,) if isinstance(request_ids, str) else list(request_ids)
                companions = [book.companion_of[i] for i in ids if i in book.companion_of]
                if companions:
                    request_ids = ids + companions
            finished = orig_finish(self, request_ids, finished_status)
            if book:
                for request in finished:
                    book.forget(request.request_id)
            return finished

        return {
            "add_request": add_request,
            "schedule": schedule,
            "update_from_output": update_from_output,
            "finish_requests": finish_requests,
        }


def _remaining(request: Any) -> int:
    return request.num_tokens - request.num_computed_tokens


def _hold_unaligned(scheduler: Any, book: _PairBook, status: Any) -> list[Any]:
    """Skip, for the coming step, pair members that would sample without their partner."""
    held = []
    coming_step = scheduler.current_step + 1  # schedule() increments current_step first
    for main_id, comp_id in book.companion_of.items():
        main = scheduler.requests.get(main_id)
        comp = scheduler.requests.get(comp_id)
        if main is None or comp is None:
            continue
        for x, y in ((main, comp), (comp, main)):
            if x.status != status.RUNNING:
                continue
            partner_not_running = y.status != status.RUNNING
            # x is one token from sampling while y still has a prompt (or recomputation) to work through.
            x_would_sample_alone = _remaining(x) <= 1 and _remaining(y) > 1
            if partner_not_running or x_would_sample_alone:
                x.next_decode_eligible_step = coming_step + 1
                held.append(x)
    return held


def _break_deadlock(scheduler: Any, book: _PairBook, held: list[Any], status: Any) -> None:
    """Nothing ran: free the blocks of one held member whose partner is stuck in the waiting queue."""
    for x in reversed(held):
        partner = scheduler.requests.get(book.partner(x.request_id) or "")
        if x.status == status.RUNNING and partner is not None and partner.status != status.RUNNING:
            scheduler.running = [r for r in scheduler.running if r is not x]
            scheduler._preempt_request(x, time.monotonic())
            book.deadlock_breaks += 1
            logger.debug("declab: preempted held %s so that %s can be admitted", x.request_id, partner.request_id)
            return


def _drop_unaligned_tokens(scheduler: Any, book: _PairBook, scheduler_output: Any, runner_output: Any) -> list[Any]:
    """Empty the sampled tokens of pair members that did not sample together with their partner this step."""
    sampled = runner_output.sampled_token_ids
    index = runner_output.req_id_to_index
    if not sampled:
        return []
    scheduled = scheduler_output.num_scheduled_tokens
    dropped = []
    seen: set[str] = set()
    for req_id in scheduled:
        main_id = book.main_of.get(req_id, req_id)
        comp_id = book.companion_of.get(main_id)
        if comp_id is None or main_id in seen:
            continue
        seen.add(main_id)
        main = scheduler.requests.get(main_id)
        comp = scheduler.requests.get(comp_id)
        main_tokens = sampled[index[main_id]] if main_id in scheduled and main_id in index else []
        comp_tokens = sampled[index[comp_id]] if comp_id in scheduled and comp_id in index else []
        aligned = (
            main is not None
            and comp is not None
            and len(main_tokens) > 0
            and list(main_tokens) == list(comp_tokens)
            and main.num_output_tokens == comp.num_output_tokens
        )
        if aligned:
            continue
        for rid, tokens, request in ((main_id, main_tokens, main), (comp_id, comp_tokens, comp)):
            if len(tokens) > 0 and request is not None:
                sampled[index[rid]] = []
                dropped.append(request)
        if dropped:
            book.rollbacks += 1
    return dropped


def _end_orphans(scheduler: Any, book: _PairBook, outputs: dict, status: Any) -> None:
    """A main request that finished this step takes its companion along; a companion that ended on its own (it
    should not: its limits are the main request's) ends the main request with an abort."""
    for main_id, comp_id in list(book.companion_of.items()):
        main = scheduler.requests.get(main_id)
        comp = scheduler.requests.get(comp_id)
        main_done = main is None or main.is_finished()
        comp_done = comp is None or comp.is_finished()
        if main_done:
            if not comp_done:
                scheduler.finish_requests(comp_id, status.FINISHED_ABORTED)
            book.forget(main_id)
        elif comp_done:
            logger.error("declab: companion of %s ended first; aborting the request", main_id)
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


def _hide_companions(book: _PairBook, outputs: dict) -> None:
    for client_outputs in outputs.values():
        kept = [o for o in client_outputs.outputs if not o.request_id.endswith(COMPANION_SUFFIX)]
        if len(kept) != len(client_outputs.outputs):
            client_outputs.outputs = kept
        finished = getattr(client_outputs, "finished_requests", None)
        if finished:
            client_outputs.finished_requests = {r for r in finished if not r.endswith(COMPANION_SUFFIX)}
