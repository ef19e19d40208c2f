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
from declab.plugins.common import RowContext, RowProcessor

logger = logging.getLogger(__name__)

ROUTER_FQCN = "declab.integrations.router:DeclabLogitsRouter"


class DeclabLogitsRouter(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:  # front-end, at admission
        parse_request_args(sampling_params.extra_args)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        model_config = vllm_config.model_config
        self._model_config = model_config
        self.ctx = RowContext(
            vocab_size=model_config.get_vocab_size(),
            eos_token_id=self._eos_token_id(model_config),
            tokenize=self._tokenize,
            tokenizer=lambda: self._tokenizer,
        )
        self.rows: dict[int, RowProcessor] = {}

    @staticmethod
    def _eos_token_id(model_config) -> int | None:
        eos = getattr(model_config.hf_config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        return eos

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
        return processor_cls(request.params, prompt_ids or [], output_ids, self.ctx)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, processor in self.rows.items():
            row_logits = logits[row]
            new = processor(row_logits)
            if new is not row_logits:
                logits[row] = new
        return logits
