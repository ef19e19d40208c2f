"""Plain data shared by the contrastive plugins (CAD, LQCD, M3ID): their common parameter, the ``extra_args`` keys
the engine writes, the sampling settings of a pair, and the admission checks. No torch, no vLLM import: plugin
specs, the front-end validation and the pair scheduler read it; the torch side is ``declab.plugins.shared.contrastive``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from declab.integrations.sdk.params import ParamSpec

# Keys of SamplingParams.extra_args written by the engine (never by users).
PAIR_KEY = "declab_pair"  # {"id": main request id, "role": "main"|"contrast", "sampling": {...}}
CONTRAST_IDS_KEY = "declab_contrast_prompt_token_ids"  # filled at admission from ``contrast_prompt``

# Patches every contrastive plugin needs (declab.patches): the pair scheduler and the admission-time tokenizer.
CONTRASTIVE_PATCHES = ("contrast_prompt_tokens", "contrastive_pairs")

ROLE_MAIN = "main"
ROLE_CONTRAST = "contrast"

CONTRAST_PROMPT_PARAM = ParamSpec(
    "contrast_prompt",
    str,
    max_length=1_000_000,
    doc="prompt of the companion row (without the context / neutral query / without the image), raw text used "
    "verbatim as a completion prompt (for chat requests: the contrast conversation already rendered with the chat "
    "template); its token count must leave room for max_tokens within max_model_len",
)

# vLLM's threshold below which a temperature means greedy (vllm.sampling_params._SAMPLING_EPS).
GREEDY_EPS = 1e-5


@dataclass(frozen=True)
class SamplingSettings:
    """The main request's own sampling settings. The engine decodes both rows greedily over a one-hot row, so
    temperature / top-k / top-p / min-p / seed are applied here, to the contrasted logits."""

    temperature: float = 1.0
    top_k: int = 0  # 0 or -1: off
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamplingSettings":
        return cls(**{k: d[k] for k in ("temperature", "top_k", "top_p", "min_p", "seed") if k in d})


def is_contrastive(spec: Any) -> bool:
    """Whether a plugin spec is a contrastive method (it needs the pair machinery)."""
    return bool(spec.logits is not None and spec.logits.companions)


# SamplingParams options the pair machinery cannot honour: the engine's own penalties, biases and masks would act
# on the one-hot row after the contrastive choice (or empty it), and a dropped step must not carry prompt logprobs.
_UNSUPPORTED_OPTIONS = (
    ("presence_penalty", 0.0),
    ("frequency_penalty", 0.0),
    ("repetition_penalty", 1.0),
    ("min_tokens", 0),
    ("logit_bias", None),
    ("allowed_token_ids", None),
    ("bad_words", None),
    ("prompt_logprobs", None),
    ("structured_outputs", None),
)


def check_sampling_options(sampling_params: Any, method: str) -> None:
    """Reject (ValueError naming the option) what a contrastive request cannot combine with."""
    for name, neutral in _UNSUPPORTED_OPTIONS:
        value = getattr(sampling_params, name, neutral)
        if value is not None and value != neutral and not (neutral is None and not value):
            raise ValueError(f"{name} is not supported together with declab.method={method!r} (got {value!r})")


def contrastive_hook(row_processor: str) -> Any:
    """The logits hook of a contrastive method: its ``contrast_prompt`` is a companion row decoded in lockstep
    (synchronous scheduling), and vLLM options the pair cannot honour are refused at admission."""
    from declab.integrations.sdk import LogitsHook

    return LogitsHook(
        row_processor=row_processor,
        check_sampling="declab.plugins.shared.contrastive_args:check_sampling_options",
        companions=("contrast_prompt",),
        synchronous_scheduling=True,
    )
