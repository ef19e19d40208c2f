"""How much memory ``declab serve`` gives vLLM's CPU KV cache when the user does not say.

vLLM's CPU backend reads ``--gpu-memory-utilization`` (default 0.92) as the fraction of the *machine's* memory its
worker reserves, and refuses to start when less than that is available ("Available memory ... is less than desired
CPU memory utilization"): 20.7 GiB of KV cache for a 29M model on a 24 GiB machine, and no start at all when other
processes hold memory. ``declab serve`` sizes the cache for the served model instead and passes it as
``--kv-cache-memory-bytes`` (which vLLM's CPU worker takes as is, skipping that check and its warm-up profiling):

    KV bytes per worker = max_num_seqs x max_model_len x bytes per token (2 x layers x KV heads x head size x dtype),

enough for vLLM's scheduler to hold every sequence it may admit at full length, capped at ``AVAILABLE_FRACTION`` of
the memory available at start (shared by the engine's workers), and never below one full-length sequence (vLLM's own
minimum). The user's choice wins: ``--kv-cache-memory-bytes``, ``--gpu-memory-utilization`` (on the command line or in
a ``--config`` file) or ``VLLM_CPU_KVCACHE_SPACE`` leave vLLM's sizing untouched, and so does a GPU build of vLLM.
When the model's config cannot be read the cache is left to vLLM too (and ``declab serve`` says so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

AVAILABLE_FRACTION = 0.5  # of the memory available at start, for the KV caches of all the engine's workers
DEFAULT_MAX_NUM_SEQS = 128  # vLLM 0.32's CPU default for the OpenAI server, per worker (arg_utils.py)
USER_MEMORY_ENV = "VLLM_CPU_KVCACHE_SPACE"
KV_BYTES_FLAG = "--kv-cache-memory-bytes"
_MiB = 1 << 20
_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1,
                "fp8_e5m2": 1, "fp8_ds_mla": 1}
_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def runs_on_cpu() -> bool:
    """Whether the installed vLLM is a CPU build, the way ``vllm.platforms.cpu_platform_plugin`` decides, without
    importing vLLM (seconds): ``VLLM_TARGET_DEVICE=cpu``, a version with ``cpu`` in it (the ``vllm-cpu`` distribution),
    or macOS."""
    from importlib.metadata import PackageNotFoundError, version

    if os.environ.get("VLLM_TARGET_DEVICE") == "cpu" or sys.platform == "darwin":
        return True
    try:
        return "cpu" in version("vllm")
    except PackageNotFoundError:
        try:
            version("vllm-cpu")
            return True
        except PackageNotFoundError:
            return False


def human_int(text: str | int) -> int:
    """vLLM's human-readable integers (``vllm.utils.argparse_utils.human_readable_int``, not imported: it imports
    vLLM): ``2048``, ``2k`` (x1000), ``2K`` (x1024), ``1g``, ``1G``..."""
    s = str(text).strip()
    if s and s[-1] in _SUFFIX:
        return int(float(s[:-1]) * _SUFFIX[s[-1]])
    return int(s)


# ----------------------------------------------------------------------------------------------------------------
# The sizing decision (pure)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What one token of the model costs in KV cache: layers, KV heads, head size, bytes per element."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    max_model_len: int  # the model's own limit (max_position_embeddings)

    def bytes_per_token(self, tensor_parallel: int = 1, pipeline_parallel: int = 1) -> int:
        """KV bytes per token on one worker: KV heads split over tensor parallelism (replicated below one head per
        worker, as vLLM does), layers over pipeline stages."""
        heads = max(1, math.ceil(self.kv_heads / tensor_parallel))
        layers = max(1, math.ceil(self.layers / pipeline_parallel))
        return 2 * layers * heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class KvCachePlan:
    """The KV cache ``declab serve`` asks vLLM for (``bytes`` per worker) and how it was reached."""

    bytes: int
    wanted_bytes: int  # max_num_seqs x max_model_len x bytes_per_token
    cap_bytes: int  # AVAILABLE_FRACTION of available memory, per worker
    max_num_seqs: int
    max_model_len: int
    bytes_per_token: int
    workers: int
    available_bytes: int

    @property
    def capped(self) -> bool:
        return self.bytes < self.wanted_bytes

    @property
    def tokens(self) -> int:
        return self.bytes // self.bytes_per_token

    def describe(self) -> str:
        line = (f"KV cache {self.bytes / _MiB:.0f} MiB per worker ({self.tokens} tokens): sized for "
                f"{self.max_num_seqs} sequences x {self.max_model_len} tokens x {self.bytes_per_token} B/token")
        if self.capped:
            line += (f", capped at {AVAILABLE_FRACTION:.0%} of the {self.available_bytes / (1 << 30):.1f} GiB "
                     f"available" + (f" / {self.workers} workers" if self.workers > 1 else ""))
        return line + f" (set {KV_BYTES_FLAG}, {USER_MEMORY_ENV} or --gpu-memory-utilization to choose)"


def plan_kv_cache(shape: ModelShape, *, max_num_seqs: int, max_model_len: int, available_bytes: int,
                  tensor_parallel: int = 1, pipeline_parallel: int = 1, data_parallel: int = 1) -> KvCachePlan:
    """KV bytes per worker for ``max_num_seqs`` sequences of ``max_model_len`` tokens, at most ``AVAILABLE_FRACTION``
    of ``available_bytes`` shared by all workers, at least one ``max_model_len`` sequence; whole MiB."""
    per_token = shape.bytes_per_token(tensor_parallel, pipeline_parallel)
    workers = tensor_parallel * pipeline_parallel * data_parallel
    wanted = max_num_seqs * max_model_len * per_token
    cap = int(available_bytes * AVAILABLE_FRACTION) // workers
    floor = max_model_len * per_token
    chosen = max(floor, min(wanted, cap))
    chosen = -(-chosen // _MiB) * _MiB
    return KvCachePlan(bytes=chosen, wanted_bytes=wanted, cap_bytes=cap, max_num_seqs=max_num_seqs,
                       max_model_len=max_model_len, bytes_per_token=per_token, workers=workers,
                       available_bytes=available_bytes)


# ----------------------------------------------------------------------------------------------------------------
# Reading the command line and the model
# ----------------------------------------------------------------------------------------------------------------


def _serve_parser() -> argparse.ArgumentParser:
    """The few ``vllm serve`` flags the sizing reads; everything else is ignored (parse_known_args)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--gpu-memory-utilization", KV_BYTES_FLAG, "--max-num-seqs", "--max-model-len", "--dtype",
                 "--kv-cache-dtype", "--config"):
        p.add_argument(flag)
    p.add_argument("--tensor-parallel-size", "-tp")
    p.add_argument("--pipeline-parallel-size", "-pp")
    p.add_argument("--data-parallel-size", "-dp")
    return p


def _normalized(args: Sequence[str]) -> list[str]:
    """``--max_num_seqs=4`` -> ``--max-num-seqs=4`` (vLLM's parser accepts both spellings)."""
    out = []
    for a in args:
        if a.startswith("--"):
            key, eq, value = a.partition("=")
            a = key.replace("_", "-") + eq + value
        out.append(a)
    return out


def serve_settings(vllm_args: Sequence[str]) -> dict[str, Any]:
    """The sizing-relevant settings of a ``vllm serve`` command line, ``--config`` YAML values under command-line
    ones (vLLM's precedence); keys as vLLM's dest names, values as given."""
    known, _ = _serve_parser().parse_known_args(_normalized(vllm_args))
    settings: dict[str, Any] = {}
    if known.config:
        import yaml

        data = yaml.safe_load(Path(known.config).read_text()) or {}
        settings.update({str(k).replace("-", "_"): v for k, v in data.items()})
    settings.update({k: v for k, v in vars(known).items() if v is not None and k != "config"})
    return settings


def user_chose_kv_memory(settings: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """What the user set that sizes the KV cache, or None."""
    for key in ("kv_cache_memory_bytes", "gpu_memory_utilization"):
        if settings.get(key) is not None:
            return "--" + key.replace("_", "-")
    if env.get(USER_MEMORY_ENV, "") != "":
        return USER_MEMORY_ENV
    return None


def _read_config(model: str) -> dict[str, Any]:
    local = Path(model) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import AutoConfig  # a hub id: vLLM resolves it the same way

    return AutoConfig.from_pretrained(model).to_dict()


def model_shape(model: str, settings: Mapping[str, Any]) -> ModelShape:
    """The KV shape of ``model`` (a folder or a hub id) at the dtype the command line asks for. Raises (KeyError,
    OSError, ...) when the config does not say."""
    cfg = _read_config(model)
    cfg = cfg.get("text_config") or cfg
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or (1 if cfg.get("multi_query") else heads)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    dtype = str(settings.get("kv_cache_dtype") or "auto")
    if dtype == "auto":
        dtype = str(settings.get("dtype") or "auto")
    if dtype == "auto":
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    return ModelShape(layers=cfg["num_hidden_layers"], kv_heads=kv_heads, head_dim=head_dim,
                      dtype_bytes=_DTYPE_BYTES.get(dtype.removeprefix("torch."), 4),
                      max_model_len=int(cfg.get("max_position_embeddings") or 2048))


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def kv_cache_for_serve(model: str, vllm_args: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], str]:
    """The flags ``declab serve`` adds for the KV cache (none when the user chose or on GPU) and a line saying why."""
    if not runs_on_cpu():
        return [], "KV cache: vLLM's --gpu-memory-utilization (GPU build)"
    settings = serve_settings(vllm_args)
    chosen = user_chose_kv_memory(settings, env)
    if chosen:
        return [], f"KV cache: sized by vLLM from your {chosen}"
    try:
        shape = model_shape(model, settings)
    except Exception as e:  # noqa: BLE001 - any unreadable config: leave the sizing to vLLM, and say so
        return [], (f"KV cache: left to vLLM's --gpu-memory-utilization default (could not read {model}'s config: "
                    f"{type(e).__name__}: {e})")
    max_len = settings.get("max_model_len")
    max_len = shape.max_model_len if max_len in (None, "auto", "-1") else human_int(max_len)
    tp, pp, dp = (int(settings.get(k) or 1) for k in ("tensor_parallel_size", "pipeline_parallel_size",
                                                      "data_parallel_size"))
    seqs = int(settings.get("max_num_seqs") or DEFAULT_MAX_NUM_SEQS * tp * pp)
    plan = plan_kv_cache(shape, max_num_seqs=seqs, max_model_len=max_len, available_bytes=available_memory(),
                         tensor_parallel=tp, pipeline_parallel=pp, data_parallel=dp)
    return [KV_BYTES_FLAG, str(plan.bytes)], plan.describe()
