"""The one vLLM logits processor that carries every logits-level plugin (V1 model-runner interface).

vLLM runs every installed logits processor on every step, so N independent processors would cost N passes over the
batch. Instead one router holds, per persistent-batch row, the ``RowProcessor`` of the plugin the request named in
``extra_args["declab"]`` and leaves every other row untouched (an empty dict: ``apply`` returns at once).

It is attached to the engine config only when a logits-level plugin is selected
(``declab.patches.engine_args``); it is never an entry-point logits processor, so an installed but unselected
suite adds nothing to the sampler.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from declab.integrations import stat_logger
from declab.integrations.request_args import check_proposer_request, parse_request_args
from declab.integrations.sdk.runtime import eos_token_id
from declab.integrations.sdk.groups import GROUP_KEY, ROLE_MAIN, check_group_sampling_options
from declab.integrations.sdk.rows import RowContext, RowProcessor
from declab.integrations.sdk.sampling_options import refuse_sampling_options
from declab.integrations.sdk.sampling import SamplingSettings, force_token
from declab.integrations.sdk.spec import load_object

logger = logging.getLogger(__name__)

ROUTER_FQCN = "declab.integrations.router:DeclabLogitsRouter"


class DeclabLogitsRouter(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:  # front-end, at admission
        try:
            request = parse_request_args(sampling_params.extra_args)
            if request is None or request.spec.logits is None:  # none, or a proposer's parameters (validated)
                check_proposer_request(request, sampling_params)  # the router's engine has no speculative proposer
                return
            hook = request.spec.logits
            if hook.companions:
                check_group_sampling_options(sampling_params, request.spec.name)
            refuse_sampling_options(sampling_params, request.spec.name, hook.refused_options, hook.refused_reason)
            if hook.bundled_completions:
                from declab.integrations.sdk.embeddings import check_bundled_count

                check_bundled_count(sampling_params, request.params[hook.bundled_completions],
                                    hook.bundled_completions, request.spec.name)
            if hook.check_sampling:
                load_object(hook.check_sampling)(sampling_params, request.spec.name)
        except ValueError as e:
            stat_logger.record_rejection(sampling_params.extra_args, e)
            raise
        if not hook.companions:  # a request group is admitted once its companion prompts fit (prompt_rendering)
            stat_logger.record_request(request.spec.name)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        model_config = vllm_config.model_config
        self._model_config = model_config
        self.ctx = RowContext(
            vocab_size=model_config.get_vocab_size(),
            eos_token_id=eos_token_id(model_config),
            tokenize=self._tokenize,
            tokenizer=lambda: self._tokenizer,
        )
        self.rows: dict[int, RowProcessor] = {}


    @functools.cached_property
    def _tokenizer(self):
        # Loaded in the worker on first use only (most plugins never need text -> ids).
        from vllm.tokenizers import get_tokenizer

        mc = self._model_config
        return get_tokenizer(mc.tokenizer, trust_remote_code=mc.trust_remote_code, revision=mc.tokenizer_revision)

    def _tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def is_argmax_invariant(self) -> bool:
        # Plugins change which token wins, so the router must also run for greedy rows.
        return False

    def _new_row(self, params, prompt_ids, output_ids) -> RowProcessor | None:
        request = parse_request_args(params.extra_args)
        if request is None or request.spec.logits is None:  # a proposer's parameters: no logits transform
            return None
        # A group member's own params are a greedy copy: the group samples with the main request's settings, which
        # the request-group seam (declab.patches.request_groups) wrote into extra_args.
        group = params.extra_args.get(GROUP_KEY)
        sampling = (SamplingSettings.from_dict(group.get("sampling") or {}) if group is not None
                    else SamplingSettings.from_sampling_params(params))
        processor_cls = request.spec.load_row_processor()
        processor = processor_cls(request.params, prompt_ids or [], output_ids, replace(self.ctx, sampling=sampling))
        if processor.grouped:
            processor.group_id = (group or {}).get("id")
            processor.role = (group or {}).get("role")
            processor.companions = request.spec.logits.companions
        return processor

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        groups: dict[str, dict[str, int]] = {}
        for row, processor in self.rows.items():
            if processor.grouped:
                if processor.group_id is not None:
                    groups.setdefault(processor.group_id, {})[processor.role] = row
                continue
            processor.batch_row = row
            row_logits = logits[row]
            new = processor(row_logits)
            if new is not row_logits:
                logits[row] = new
        for rows in groups.values():
            self._apply_group(logits, rows)
        return logits

    def _apply_group(self, logits: torch.Tensor, rows: dict[str, int]) -> None:
        """Choose the token of a request group from all its rows and force it on every member.

        Only when every member is in the batch at the same position; otherwise the rows keep their logits and the
        request-group seam discards what they sample (it recomputes the position once the group is aligned).
        """
        if ROLE_MAIN not in rows:
            return
        main = self.rows[rows[ROLE_MAIN]]
        if len(rows) != 1 + len(main.companions):
            return
        step = len(main.output_ids)
        if any(len(self.rows[row].output_ids) != step for row in rows.values()):
            return
        token = main.choose({role: logits[row].float() for role, row in rows.items()}, step)
        for row in rows.values():
            force_token(logits[row], token)
