"""What a plugin declares: one ``PluginSpec`` per method, with a typed section per vLLM hook it uses.

Specs are plain data (no torch, no vLLM import), so discovery (``declab.integrations.registry``), the entry point, the
CLI and admission-time validation can read them cheaply. A plugin folder exposes ``SPEC`` (and optionally
``EXTRA_SPECS``, further methods of the same paper, e.g. a baseline) in its ``spec.py``.

Dotted ``"module:attr"`` strings point at code that imports torch or vLLM; they are resolved only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from declab.integrations.sdk.params import ParamSpec
from declab.integrations.sdk.sampling_options import NEUTRAL

# How a plugin reaches vLLM (the catalog's "hook" column). Derived from the section a spec fills.
HOOK_LOGITS = "logits-processor"  # per-request transform, through the one router logits processor
HOOK_PROPOSER = "speculative-proposer"  # speculative_config={"method": "custom_class", ...}
HOOK_SEARCH = "search-loop"  # integration-level loop over engine requests (offline API / HTTP endpoint)
HOOK_BENCH = "benchmark"
HOOK_ATTENTION = "attention-backend"  # vLLM's CPU attention backend, swapped for declab's (sdk.attention)

STATUSES = ("working", "partial", "planned", "not-applicable")


def load_object(path: str) -> Any:
    """``"pkg.module:attr"`` -> the attribute (``"pkg.module"`` -> the module)."""
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class LogitsHook:
    """A per-request logits transform, carried by the one router logits processor (``declab.integrations.router``).

    ``row_processor``: ``"module:Class"`` of the ``RowProcessor`` (or ``GroupRowProcessor``) made per request.
    ``validate``: optional ``"module:function"`` called with the resolved parameters at admission (cross-field and
    content checks; raise ``ValueError`` naming the parameter).
    ``check_sampling``: optional ``"module:function"`` called with ``(sampling_params, method)`` at admission, to
    refuse vLLM sampling options the method cannot honour (cross-option checks).
    ``refused_options``: names of ``SamplingParams`` options the method cannot combine with
    (``declab.integrations.sdk.sampling_options.NEUTRAL`` lists them), refused at admission with a ``ValueError``
    naming the option; ``refused_reason`` says why, in the message.
    ``companions``: names of this method's string parameters that are prompts of *companion rows*: each is
    tokenized at admission (prompt-rendering seam) and decoded as a hidden request in lockstep with the main
    request (request-group seam), which needs vLLM's synchronous scheduler (the engine-args seam turns async
    scheduling off and refuses ``--async-scheduling``). The row processor must then be a ``GroupRowProcessor``;
    vLLM options a group cannot honour (penalties, biases, masks) are refused at admission.
    ``empty_companion``: what an empty companion prompt (no tokens) means: ``"refuse"`` (an error naming the
    parameter) or ``"last_prompt_token"`` (the companion row starts from the main prompt's last token alone, HF
    transformers' rule for classifier-free guidance without ``negative_prompt_ids``).
    ``input_embeddings``: the row processor implements ``sdk.embeddings.RowInputEmbeddings`` (it gives its row's input
    embedding at positions it chooses; the row-input-embeddings seam).
    ``bundled_completions``: name of the integer parameter that is the request's number of completions, all decoded
    by one row whose processor implements ``sdk.embeddings.BundledCompletions`` (the bundled-completions seam; the
    request is sent with vLLM's ``n`` equal to it).
    """

    row_processor: str
    validate: str | None = None
    check_sampling: str | None = None
    refused_options: tuple[str, ...] = ()
    refused_reason: str = ""
    companions: tuple[str, ...] = ()
    empty_companion: str = "refuse"
    input_embeddings: bool = False
    bundled_completions: str | None = None

    def __post_init__(self) -> None:
        from declab.integrations.sdk.groups import EMPTY_COMPANION_RULES

        if self.empty_companion not in EMPTY_COMPANION_RULES:
            raise ValueError(f"empty_companion {self.empty_companion!r} not in {EMPTY_COMPANION_RULES}")


@dataclass(frozen=True)
class ProposerHook:
    """A speculative proposer for ``speculative_config={"method": "custom_class", "model": proposer}``.

    ``proposer``: import path of the proposer class as vLLM's ``custom_class`` takes it (``"pkg.module.Class"``).
    ``max_speculative_tokens``: the largest chain length it accepts (tree modes state their own sizes).
    ``num_speculative_tokens``: the K a user passes by default (``declab list --json`` shows it in the
    ``speculative_config`` of the plugin's entry).
    ``bench_configs``: configurations ``declab bench spec`` runs for this proposer: name -> ``ProposerBenchConfig``.
    ``bench_alias``: deprecated short name that keeps old ``declab bench spec`` flags working:
    ``--<alias>-config JSON`` (= ``--settings <plugin>=JSON``) and ``--<alias>-k K`` (= this plugin's K).
    ``check_request``: optional ``"module:function"`` for a proposer with per-request parameters, called at
    admission with ``(sampling_params, params, vllm_config)`` (``params``: the resolved per-request parameters;
    ``vllm_config``: the engine's, None where the front-end does not have it): refuse (``ValueError`` naming the
    parameter or option) what the method cannot honour on this engine.
    """

    proposer: str
    max_speculative_tokens: int = 16
    num_speculative_tokens: int = 4
    bench_configs: Mapping[str, "ProposerBenchConfig"] = field(default_factory=dict)
    bench_alias: str | None = None
    check_request: str | None = None

    def speculative_config(self) -> dict[str, Any]:
        """What a user passes as vLLM's ``speculative_config`` to run this proposer."""
        return {"method": "custom_class", "model": self.proposer, "num_speculative_tokens": self.num_speculative_tokens}


@dataclass(frozen=True)
class ProposerBenchConfig:
    """One configuration of a proposer in ``declab bench spec``.

    ``settings``: engine-wide settings of the plugin (``additional_config["declab"][plugin]``).
    ``num_speculative_tokens``: fixed K (e.g. a tree's draft nodes); None = the K the ngram sweep picked.
    ``timeout_factor``: multiplies ``--child-timeout`` for slow configurations.
    ``color``: plot colour.
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    num_speculative_tokens: int | None = None
    timeout_factor: float = 1.0
    color: str | None = None


@dataclass(frozen=True)
class AttentionHook:
    """An attention-backend plugin: declab's CPU attention backend (``declab.integrations.sdk.attention``) replaces
    vLLM's ``CPU_ATTN`` in every process, and ``policy`` customises its decode path.

    ``policy``: ``"module:function"`` called in the worker with ``(settings, facts)`` (the plugin's validated
    engine-wide settings; ``facts``: ``num_layers``, ``head_size``, ``block_size``, ``num_kv_heads``) and returning a
    ``KVPageCodec`` (KV pages stored in another format, decoded on read) or a ``TokenSelector`` (sparse attention
    of decode tokens). ``check``: optional ``"module:function"`` with the same arguments, called at start-up in the
    front-end: raise ``ValueError`` naming the setting when the settings do not fit the model or the engine.
    """

    policy: str
    check: str | None = None


@dataclass(frozen=True)
class SearchHook:
    """A search loop over engine requests: ``offline`` = ``"module:function"`` taking an ``LLM``; ``http`` = the same
    over a running OpenAI-compatible server (optional)."""

    offline: str
    http: str | None = None


@dataclass(frozen=True)
class BenchEntry:
    """A ``declab bench NAME`` sub-command living in a plugin folder.

    ``module`` exposes ``add_arguments(parser)``, ``run(args) -> report``, ``plot(report, path)`` (every benchmark
    writes JSON + PNG) and optionally ``summary(report) -> str``; it imports ``declab.integrations.sdk.bench``. ``paper``: a reading-list paper this benchmark implements (a benchmark paper
    such as JSONSchemaBench), so the catalog shows it as built.
    """

    name: str
    module: str
    help: str = ""
    paper: int | None = None


@dataclass(frozen=True)
class PluginSpec:
    name: str
    paper: int  # number in ../shared/seed (1..65); 0 = not in the reading list (a baseline)
    status: str
    summary: str
    reason: str = ""  # why partial / what is missing
    params: tuple[ParamSpec, ...] = ()  # per-request parameters (extra_args["declab"] / vllm_xargs "declab.*")
    # Engine-wide settings, given as additional_config={"declab": {name: {...}}} and validated at start-up.
    settings: tuple[ParamSpec, ...] = ()
    logits: LogitsHook | None = None
    proposer: ProposerHook | None = None
    search: SearchHook | None = None
    attention: AttentionHook | None = None
    benches: tuple[BenchEntry, ...] = ()
    # Names of patches (declab.patches.registry()) applied by the entry point, in every vLLM process, when selected.
    patches: tuple[str, ...] = ()
    # Patches of worker internals (model runner), applied by the plugin's own vLLM object when vLLM constructs it
    # inside the worker, so the front-end never imports runner modules.
    worker_patches: tuple[str, ...] = ()
    # Deprecated: the environment variable that carried ``settings`` as JSON before additional_config.
    settings_env: str | None = None
    baseline_of: str | None = None  # this method is the baseline another plugin is compared with

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"plugin {self.name}: status {self.status!r} not in {STATUSES}")
        hooks = [h for h in (self.logits, self.proposer, self.search, self.attention) if h is not None]
        if len(hooks) > 1:
            raise ValueError(f"plugin {self.name}: declare one hook section (logits, proposer, search or attention)")
        unknown = [o for o in (self.logits.refused_options if self.logits else ()) if o not in NEUTRAL]
        if unknown:
            raise ValueError(f"plugin {self.name}: refused_options {unknown} are not among {sorted(NEUTRAL)}")
        if self.logits is not None and self.logits.companions:
            names = {p.name for p in self.params}
            missing = [c for c in self.logits.companions if c not in names]
            if missing:
                raise ValueError(f"plugin {self.name}: companion prompts {missing} are not declared parameters")
        if self.logits is not None and self.logits.bundled_completions:
            if self.logits.bundled_completions not in {p.name for p in self.params}:
                raise ValueError(f"plugin {self.name}: bundled_completions names no declared parameter")

    @property
    def hook(self) -> str:
        if self.logits is not None:
            return HOOK_LOGITS
        if self.proposer is not None:
            return HOOK_PROPOSER
        if self.search is not None:
            return HOOK_SEARCH
        if self.attention is not None:
            return HOOK_ATTENTION
        return HOOK_BENCH

    def validate_request(self, params: dict[str, Any]) -> None:
        """Cross-field / content checks beyond ParamSpec (``logits.validate``)."""
        if self.logits is not None and self.logits.validate:
            load_object(self.logits.validate)(params)

    def load_row_processor(self) -> type:
        assert self.logits is not None, f"plugin {self.name} has no logits hook"
        return load_object(self.logits.row_processor)
