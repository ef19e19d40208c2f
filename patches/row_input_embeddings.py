"""Row-input-embeddings seam: a row's input embedding at some positions is given by its plugin
(``declab.integrations.sdk.embeddings.RowInputEmbeddings``); every other row and position is vLLM's own.

Why: Superposed Decoding feeds, at every generated position, a weighted mix of several tokens' embeddings instead of
one token's. vLLM 0.32 takes input embeddings only for the prompt (``prompt_embeds``, fixed before the request
starts); logits processors run after the forward pass and a ``custom_class`` proposer cannot change the target's
inputs. Nothing per step reaches the model's input.

How: wraps ``GPUModelRunner._model_forward`` (the CPU runner inherits it; vLLM documents it as the method to
override "for model execution"). When the declab router holds, for some row of the persistent batch, a processor
implementing ``RowInputEmbeddings``, the wrapper embeds the step's ``input_ids`` with the model's own
``embed_input_ids``, asks each such processor for the embeddings of its row's scheduled positions (flat range from
the runner's ``query_start_loc``, first position from ``input_batch.num_computed_tokens_cpu``), writes them in, and
calls the original with ``inputs_embeds``. Before that, ``attach`` hands the processor a dict stored on the runner's
``CachedRequestState`` of the request (kept across preemption, freed with the request), so a processor the router
rebuilds after a preemption finds its state again. With no such row the original runs unchanged (no copy, no
extra embedding call). Pipeline parallelism (a non-first rank gets ``intermediate_tensors``) is left alone.

Caveat the plugin must handle: prefix caching keys KV blocks by token ids, and a position fed a mixed embedding
holds KV no plain request with the same token ids may reuse (nor may such a row reuse theirs). The bundled-
completions seam gives such requests a cache salt of their own (``declab.patches.bundled_completions``).

vLLM version: 0.32.0 (``vllm/v1/worker/gpu_model_runner.py::GPUModelRunner._model_forward``, V1 runner; Llama-family
``embed_input_ids``).
Removal plan: drop when vLLM accepts per-step input embeddings for decode positions (the prompt-embeds work is the
closest upstream path), then feed them from the processor through that interface.
"""

from __future__ import annotations

from typing import Any

from declab.integrations.sdk import DeclabPatch


def embedding_rows(runner: Any) -> list[tuple[int, Any]]:
    """(batch row, processor) of every row whose declab processor gives input embeddings."""
    from declab.integrations.router import DeclabLogitsRouter
    from declab.integrations.sdk.embeddings import RowInputEmbeddings

    logitsprocs = getattr(runner.input_batch, "logitsprocs", None)
    if logitsprocs is None:
        return []
    for lp in logitsprocs.all:
        if isinstance(lp, DeclabLogitsRouter):
            return [(row, p) for row, p in lp.rows.items() if isinstance(p, RowInputEmbeddings)]
    return []


def request_store(runner: Any, row: int) -> dict:
    """The per-request dict of the request in batch ``row`` (on the runner's ``CachedRequestState``)."""
    from declab.integrations.sdk.embeddings import STATE_ATTR

    req_state = runner.requests[runner.input_batch.req_ids[row]]
    store = req_state.__dict__.get(STATE_ATTR)
    if store is None:
        store = req_state.__dict__[STATE_ATTR] = {"req_id": req_state.req_id}
    return store


class RowInputEmbeddingsPatch(DeclabPatch):
    name = "row_input_embeddings"
    target = "vllm.v1.worker.gpu_model_runner:GPUModelRunner"

    @classmethod
    def replacements(cls, target: Any) -> dict[str, Any]:
        original = target._model_forward

        def _model_forward(self, input_ids=None, positions=None, intermediate_tensors=None, inputs_embeds=None,
                           **kwargs):
            rows = embedding_rows(self) if inputs_embeds is None and input_ids is not None else []
            if not rows or intermediate_tensors is not None:
                return original(self, input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
            model = self.get_model()
            embed = model.embed_input_ids
            inputs_embeds = embed(input_ids)
            qsl = self.query_start_loc.np
            computed = self.input_batch.num_computed_tokens_cpu
            num_reqs = self.input_batch.num_reqs
            for row, processor in rows:
                if row >= num_reqs:
                    continue
                start, end = int(qsl[row]), int(qsl[row + 1])
                if end <= start:
                    continue
                processor.attach(request_store(self, row))
                new = processor.input_embeddings(int(computed[row]), end - start, embed)
                if new is not None:
                    inputs_embeds[start:end] = new.to(dtype=inputs_embeds.dtype, device=inputs_embeds.device)
            return original(self, input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

        _model_forward.__wrapped__ = original
        return {"_model_forward": _model_forward}
