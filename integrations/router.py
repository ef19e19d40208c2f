"""The one vLLM logits processor that carries every logits-level plugin (V1 model-runner interface).

vLLM runs every installed logits processor on every step, so N independent processors would cost N passes over the
batch. Instead one router holds, per persistent-batch row, the ``RowProcessor`` of the plugin the request named in
``extra_args["declab"]`` and leaves every other row untouched (an empty dict: ``apply`` returns at once).

It is attached to the engine config only when a logits-level plugin is selected
(``declab.patches.engine_args_router``); it is never an entry-point logits processor, so an installed but unselected
suite adds nothing to the sampler.
"""

from __future__ import annotations

import functools
import logging

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from declab.integrations.request_args import parse_request_args
from declab.integrations.sdk.runtime import eos_token_id
from declab.integrations.sdk.rows import RowContext, RowProcessor
from declab.plugins.shared.contrastive import draw_token, force_token
from declab.integrations.sdk.spec import load_object
from declab.plugins.shared.contrastive_args import PAIR_KEY, ROLE_MAIN, SamplingSettings

logger = logging.getLogger(__name__)

ROUTER_FQCN = "declab.integrations.router:DeclabLogitsRouter"


class DeclabLogitsRouter(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:  # front-end, at admission
        request = parse_request_args(sampling_params.extra_args)
        if request is not None and request.spec.logits.check_sampling:
            load_object(request.spec.logits.check_sampling)(sampling_params, request.spec.name)

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
        if request is None:
            return None
        processor_cls = request.spec.load_row_processor()
        processor = processor_cls(request.params, prompt_ids or [], output_ids, self.ctx)
        if getattr(processor, "paired", False):
            # Set by the pair scheduler (declab.patches.contrastive_pairs) on both rows of a contrastive request.
            pair = params.extra_args.get(PAIR_KEY) or {}
            processor.pair_id = pair.get("id")
            processor.role = pair.get("role")
            processor.settings = SamplingSettings.from_dict(pair.get("sampling") or {})
        return processor

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        pairs: dict[str, dict[str, int]] = {}
        for row, processor in self.rows.items():
            if getattr(processor, "paired", False):
                if processor.pair_id is not None:
                    pairs.setdefault(processor.pair_id, {})[processor.role] = row
                continue
            row_logits = logits[row]
            new = processor(row_logits)
            if new is not row_logits:
                logits[row] = new
        for rows in pairs.values():
            self._apply_pair(logits, rows)
        return logits

    def _apply_pair(self, logits: torch.Tensor, rows: dict[str, int]) -> None:
        """Draw the token of a contrastive request from its two rows and force it on both.

        Only when both rows are in the batch at the same position; otherwise the rows keep their logits and the pair
        scheduler discards what they sample (it recomputes the position once the pair is aligned).
        """
        if len(rows) != 2 or ROLE_MAIN not in rows:
            return
        main_row = rows.pop(ROLE_MAIN)
        (contrast_row,) = rows.values()
        main, companion = self.rows[main_row], self.rows[contrast_row]
        step = len(main.output_ids)
        if step != len(companion.output_ids):
            return
        contrasted = main.contrast(logits[main_row].float(), logits[contrast_row].float(), step)
        token = draw_token(contrasted, main.settings, step)
        force_token(logits[main_row], token)
        force_token(logits[contrast_row], token)
