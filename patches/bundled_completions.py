"""Bundled-completions seam: the ``n`` completions of a request are decoded by ONE engine row, and each of vLLM's
``n`` child requests receives one of them (``declab.integrations.sdk.embeddings.BundledCompletions``).

Why: Superposed Decoding (paper 30) produces k drafts from one forward pass per step, in one row whose KV cache
holds the superposition of the drafts. vLLM returns ``n`` completions only as ``n`` child requests (parallel
sampling, fanned out in the front-end), each decoded by its own row, and a row returns one token per step to its
own request. The drafts of such a
row are re-ranked every step (a draft may continue another's prefix), so they are known only at the end
and cannot be streamed as they grow.

How (two processes, two patches):

* worker, ``Worker.sample_tokens`` (the worker, not its runner, whose ``sample_tokens`` the runner-forward feed
  wraps): after each step, the current completions of every row whose declab
  processor implements ``BundledCompletions`` ride on the returned ``ModelRunnerOutput`` (attribute
  ``declab_completions``: request id -> [(token ids, finish reason)]), a few hundred integers per row.
* engine core, ``EngineCore``: ``add_request`` parks the children of a request whose method declares
  ``LogitsHook.bundled_completions`` until all ``n`` have arrived (vLLM sends them back to back), then schedules
  child 0 alone (with a cache salt of its own: its positions hold mixed-embedding KV no other request may reuse) and
  keeps children 1..n-1 out of the scheduler. ``step`` notes the completions the worker shipped (by wrapping the
  scheduler's ``update_from_output`` for the duration of the call, on the instance), drops child 0's per-step
  outputs, and when child 0 finishes gives child ``i`` completion ``i`` in one output (its finish reason its own;
  an aborted child 0 aborts them all). ``abort_requests`` forgets parked children.

Synchronous scheduling only (``EngineCore.step``; the CPU platform never schedules asynchronously); not with
pipeline parallelism (``step_with_batch_queue``) nor data parallelism (vLLM's front-end may send the children of one
request to different engine cores).

vLLM version: 0.32.0 (``vllm/v1/engine/core.py::EngineCore.add_request`` / ``abort_requests`` / ``step``,
``vllm/v1/worker/gpu_worker.py::Worker.sample_tokens`` (the CPU worker inherits it), parallel-sampling child ids
``f"{index}_{parent}"`` from ``vllm/v1/engine/parallel_sampling.py``).
Removal plan: drop when vLLM lets one request return several sequences from one row (a multi-sequence output of the
model runner, as beam search in the engine would need), or lets a plugin answer the children of a parallel-sampling
request itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from declab.integrations.sdk import DeclabPatch

logger = logging.getLogger("declab")


@dataclass
class _Bundle:
    size: int
    client_index: int
    children: dict[int, Any] = field(default_factory=dict)  # index -> Request, while parked
    carrier_id: str | None = None
    passenger_ids: dict[int, str] = field(default_factory=dict)
    latest: list | None = None  # completions the worker shipped last: [(token ids, finish reason)]


class _BundleBook:
    def __init__(self) -> None:
        self.by_parent: dict[str, _Bundle] = {}
        self.parent_of: dict[str, str] = {}  # any child id -> parent

    def __bool__(self) -> bool:
        return bool(self.by_parent)

    def forget(self, parent: str) -> None:
        bundle = self.by_parent.pop(parent, None)
        if bundle is not None:
            for rid in [bundle.carrier_id, *bundle.passenger_ids.values(), *(r.request_id for r in
                                                                          bundle.children.values())]:
                self.parent_of.pop(rid, None)


def _book(core: Any) -> _BundleBook:
    book = core.__dict__.get("_declab_bundles")
    if book is None:
        book = core._declab_bundles = _BundleBook()
    return book


def bundle_size(request: Any) -> tuple[int, str, int] | None:
    """(child index, parent id, n) if ``request`` is a child of a request whose method bundles its completions."""
    from declab.integrations.request_args import parse_request_args
    from declab.integrations.sdk.embeddings import child_index

    sp = request.sampling_params
    if sp is None or not sp.extra_args:
        return None
    child = child_index(request.request_id)
    if child is None:
        return None
    parsed = parse_request_args(sp.extra_args)
    hook = parsed.spec.logits if parsed is not None else None
    if hook is None or not hook.bundled_completions:
        return None
    return child[0], child[1], int(parsed.params[hook.bundled_completions])


def _salt(request: Any) -> None:
    request.cache_salt = f"declab-bundled:{request.request_id}"
    request.block_hashes = []
    request.update_block_hashes()


class BundledCompletionsCorePatch(DeclabPatch):
    name = "bundled_completions"
    target = "vllm.v1.engine.core:EngineCore"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from declab.integrations.sdk.embeddings import COMPLETIONS_ATTR

        orig_add, orig_abort, orig_step = target.add_request, target.abort_requests, target.step

        def add_request(self, request, request_wave: int = 0):
            child = bundle_size(request)
            if child is None:
                return orig_add(self, request, request_wave)
            index, parent, size = child
            book = _book(self)
            bundle = book.by_parent.setdefault(parent, _Bundle(size=size, client_index=request.client_index))
            bundle.children[index] = request
            book.parent_of[request.request_id] = parent
            if len(bundle.children) < bundle.size:
                return None
            children, bundle.children = bundle.children, {}
            carrier = children.pop(0)
            bundle.carrier_id = carrier.request_id
            bundle.passenger_ids = {i: r.request_id for i, r in children.items()}
            _salt(carrier)
            return orig_add(self, carrier, request_wave)

        def abort_requests(self, request_ids):
            book = _book(self)
            if book:
                ids = list(request_ids)
                for rid in ids:
                    parent = book.parent_of.get(rid)
                    bundle = book.by_parent.get(parent) if parent else None
                    if bundle is not None:  # the client aborts every child: the row goes, no completions are sent
                        if bundle.carrier_id is not None and bundle.carrier_id not in ids:
                            ids.append(bundle.carrier_id)
                        book.forget(parent)
                request_ids = ids
            return orig_abort(self, request_ids)

        def step(self):
            book = _book(self)
            if not book:
                return orig_step(self)
            scheduler = self.scheduler
            update = scheduler.update_from_output

            def update_noting_completions(scheduler_output, model_output):
                for rid, completions in (getattr(model_output, COMPLETIONS_ATTR, None) or {}).items():
                    parent = book.parent_of.get(rid)
                    if parent in book.by_parent:
                        book.by_parent[parent].latest = completions
                return update(scheduler_output, model_output)

            scheduler.update_from_output = update_noting_completions
            try:
                outputs, executed = orig_step(self)
            finally:
                del scheduler.update_from_output
            _rewrite_outputs(book, outputs)
            return outputs, executed

        return {"add_request": add_request, "abort_requests": abort_requests, "step": step}


def _rewrite_outputs(book: _BundleBook, outputs: dict) -> None:
    """Hide carriers' per-step outputs; at a carrier's finish, hand every child its completion."""
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason

    reasons = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
    carriers = {b.carrier_id: p for p, b in book.by_parent.items() if b.carrier_id is not None}
    for client_outputs in list(outputs.values()):
        kept = []
        for out in client_outputs.outputs:
            parent = carriers.get(out.request_id)
            if parent is None:
                kept.append(out)
                continue
            if out.finish_reason is None:
                continue  # the row's own tokens are placeholders
            bundle = book.by_parent[parent]
            completions = bundle.latest or []
            aborted = out.finish_reason == FinishReason.ABORT or len(completions) < bundle.size
            if aborted and out.finish_reason != FinishReason.ABORT:
                logger.error("declab: request %s finished without its %d completions", parent, bundle.size)
            extra = []
            for index, rid in [(0, out.request_id), *sorted(bundle.passenger_ids.items())]:
                tokens, reason = ([], None) if aborted else completions[index]
                finish = FinishReason.ABORT if aborted else reasons[reason]
                if index == 0:
                    out.new_token_ids = list(tokens)
                    out.finish_reason = finish
                    out.stop_reason = None
                    out.new_logprobs = None
                    kept.append(out)
                else:
                    extra.append(EngineCoreOutput(request_id=rid, new_token_ids=list(tokens), finish_reason=finish))
            target = outputs.setdefault(bundle.client_index, EngineCoreOutputs())
            if target is client_outputs:
                kept.extend(extra)
            else:
                target.outputs.extend(extra)
            finished = getattr(target, "finished_requests", None)
            if finished is not None:
                finished.update(e.request_id for e in extra)
            book.forget(parent)
        client_outputs.outputs = kept


class BundledCompletionsWorkerPatch(DeclabPatch):
    name = "bundled_completions_worker"
    target = "vllm.v1.worker.gpu_worker:Worker"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        from declab.integrations.router import DeclabLogitsRouter
        from declab.integrations.sdk.embeddings import COMPLETIONS_ATTR, BundledCompletions

        original = target.sample_tokens

        def sample_tokens(worker, *args, **kwargs):
            output = original(worker, *args, **kwargs)
            runner = worker.model_runner
            logitsprocs = getattr(runner.input_batch, "logitsprocs", None)
            router = next((lp for lp in (logitsprocs.all if logitsprocs else ())
                           if isinstance(lp, DeclabLogitsRouter)), None)
            if router is None or not hasattr(output, "req_ids"):
                return output
            shipped = {}
            req_ids = runner.input_batch.req_ids
            for row, processor in router.rows.items():
                if (isinstance(processor, BundledCompletions) and row < len(req_ids)
                        and req_ids[row] in output.req_id_to_index):
                    completions = processor.completions()
                    if completions is not None:
                        shipped[req_ids[row]] = [(list(c.token_ids), c.finish_reason) for c in completions]
            if shipped:
                setattr(output, COMPLETIONS_ATTR, shipped)
            return output

        sample_tokens.__wrapped__ = original
        return {"sample_tokens": sample_tokens}
