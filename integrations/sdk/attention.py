"""The attention-backend seam: one CPU attention backend whose decode path an attention plugin customises.

Why: vLLM 0.32 on CPU always picks ``CPU_ATTN`` (``platforms/cpu.py``) and ignores ``--attention-backend``; its C++
kernel reads dense pages and attends to every cached token. KV-cache quantization (GEAR, KIVI) needs another page
format and a decoder on read; sparse attention (TidalDecode, StreamingLLM) needs decode tokens to attend to chosen
positions only. vLLM has the pieces (``register_backend`` overrides an enum member process-wide; a backend's
``customize_spec`` sets its page format, as the in-tree TurboQuant backend does) but no plugin-level policy.

How: ``DeclabCPUAttentionBackend`` subclasses ``CPUAttentionBackend`` (the ``attention_backend`` patch registers it as
``CPU_ATTN`` when an attention plugin is selected) and asks the selected plugin's ``AttentionHook.policy`` for one
of two policies:

* ``KVPageCodec``: the page of a ``(head, token)`` becomes ``cell_bytes()`` of ``uint8`` (``customize_spec``), so
  vLLM fits more blocks in the same memory and reports the larger capacity at start-up. A block is encoded when
  its last slot is written; the tokens of a block still being filled stay in full precision in a per-layer buffer
  outside vLLM's pool (one block per running request: GEAR's streaming buffer, KIVI's residual window). On read
  the context of every request is decoded into a dense scratch cache, the step's own keys and values are written
  there unquantized (prefill attends exactly as vanilla does), and vLLM's own CPU kernel attends over it.
* ``TokenSelector``: pages stay dense and vLLM's kernel runs unchanged; then, in each layer the selector makes
  sparse, every decode row whose context exceeds the token budget is recomputed over the positions the selector
  chose (per KV head). Rows within the budget keep the kernel's output, so a budget >= the context is vanilla.

Neither changes anything when no attention plugin is selected (the patch is not applied). On CPU neither saves
time: the codec decodes before the dense kernel, the selector recomputes after it; a speed-up needs a kernel that
reads packed pages / gathers positions (a GPU kernel).

vLLM version: 0.32.0 (``v1/attention/backends/cpu_attn.py``: ``CPUAttentionBackend``, ``CPUAttentionBackendImpl``;
``v1/attention/backends/registry.py::register_backend``; ``v1/kv_cache_interface.py::AttentionSpec``
``state_content_bytes``; ``v1/worker/utils.py::customize_attention_spec``).

Removal plan: if vLLM grows a sparse-attention / KV-compression plugin interface for the CPU backend (H2O /
StreamingLLM eviction is an open request), move the policies there and delete this seam; until then check the
CPU backend's ``forward`` / ``do_kv_cache_update`` signatures and the spec fields on each vLLM bump (the engine
tests of full-budget / full-rank identity tell).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import torch

from declab.integrations.sdk.attention_policy import STATS, AttentionStats, KVPageCodec, TokenSelector
from declab.integrations.sdk.trees import cpu_key_value_views, paged_context

__all__ = ["BACKEND_PATH", "STATS", "AttentionStats", "KVPageCodec", "TokenSelector", "DeclabCPUAttentionBackend",
           "DeclabCPUAttentionImpl", "check_attention_engine", "attend_positions"]

BACKEND_PATH = "declab.integrations.sdk.attention.DeclabCPUAttentionBackend"


def selected_attention_spec() -> Any | None:
    """The selected attention plugin's spec (at most one may be selected), else None."""
    from declab.integrations import registry

    specs = [registry.get_spec(n) for n in registry.selected_plugins() if registry.get_spec(n).attention]
    if len(specs) > 1:
        raise ValueError(f"declab: attention plugins {[s.name for s in specs]} are selected together; an engine "
                         "runs one attention backend, select one of them")
    return specs[0] if specs else None


def model_facts(vllm_config: Any) -> dict[str, int]:
    model = vllm_config.model_config
    return {"num_layers": model.get_num_layers(vllm_config.parallel_config), "head_size": model.get_head_size(),
            "num_kv_heads": model.get_num_kv_heads(vllm_config.parallel_config),
            "block_size": vllm_config.cache_config.block_size}


def check_attention_engine(vllm_config: Any) -> None:
    """Start-up check in the front-end: refuse what the seam cannot serve, then the plugin's own ``check``."""
    from declab.integrations.sdk.runtime import engine_settings
    from declab.integrations.sdk.spec import load_object

    spec = selected_attention_spec()
    if spec is None:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        raise ValueError(f"declab: {spec.name} replaces vLLM's CPU attention backend and runs on CPU only")
    if vllm_config.speculative_config is not None:
        raise ValueError(f"declab: {spec.name} (an attention backend) cannot run with speculative decoding: "
                         "rejected drafts would rewrite slots of packed or sparsely read blocks, and the "
                         "tree-verification seam reads dense pages with full attention; drop --speculative-config")
    if str(vllm_config.cache_config.cache_dtype) != "auto":
        raise ValueError(f"declab: {spec.name} sets the KV page format itself; drop --kv-cache-dtype "
                         f"{vllm_config.cache_config.cache_dtype}")
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from declab.integrations.sdk.tree_verification import check_cpu_cache_layout

    model, cache = vllm_config.model_config, vllm_config.cache_config
    isa = _get_attn_isa(model.dtype, cache.block_size, model.get_head_size(), cache.cache_dtype)
    check_cpu_cache_layout(isa, head_size=model.get_head_size(), block_size=cache.block_size, what=spec.name,
                           instead="run it on a CPU whose attention uses the 'vec' layout")
    settings = engine_settings(spec, vllm_config.additional_config)
    if spec.attention.check:
        load_object(spec.attention.check)(settings, model_facts(vllm_config))


class _Policy:
    """The process's attention policy, built once from the engine config (in the worker)."""

    value: KVPageCodec | TokenSelector | None = None
    built = False

    @classmethod
    def get(cls, vllm_config: Any | None = None) -> KVPageCodec | TokenSelector | None:
        if not cls.built:
            from vllm.config import get_current_vllm_config_or_none

            from declab.integrations.sdk.runtime import engine_settings
            from declab.integrations.sdk.spec import load_object

            vllm_config = vllm_config or get_current_vllm_config_or_none()
            if vllm_config is None:
                return None
            spec = selected_attention_spec()
            if spec is not None:
                settings = engine_settings(spec, vllm_config.additional_config)
                cls.value = load_object(spec.attention.policy)(settings, model_facts(vllm_config))
            cls.built = True
        return cls.value


def _backend_base() -> type:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return CPUAttentionBackend


def _impl_base() -> type:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

    return CPUAttentionBackendImpl


class DeclabCPUAttentionBackend(_backend_base()):
    """vLLM's CPU backend with declab's impl; a codec policy changes the page (``customize_spec``)."""

    @staticmethod
    def get_impl_cls() -> type:
        return DeclabCPUAttentionImpl

    @classmethod
    def customize_spec(cls, spec: Any) -> Any:
        spec = super().customize_spec(spec)
        policy = _Policy.get()
        if isinstance(policy, KVPageCodec) and spec.state_content_bytes is None:
            spec = replace(spec, dtype=torch.uint8, state_content_bytes=policy.cell_bytes())
        return spec


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


class DeclabCPUAttentionImpl(_impl_base()):
    """``CPUAttentionBackendImpl`` whose decode path follows the process's policy."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from vllm.config import get_current_vllm_config

        config = get_current_vllm_config()
        self.policy = _Policy.get(config) if self.attn_type == "decoder" else None
        self.buffer = (BlockBuffer(capacity=4 * config.scheduler_config.max_num_seqs + 16)
                       if isinstance(self.policy, KVPageCodec) else None)

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        if self.buffer is None:
            return super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        self.buffer.write(self.policy, key, value, kv_cache, slot_mapping)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        if attn_metadata is None or self.policy is None:
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        if self.buffer is not None:
            scratch, table = self.buffer.dense_context(self.policy, layer, key, value, kv_cache, attn_metadata)
            return super().forward(layer, query, key, value, scratch, replace(attn_metadata, block_table=table),
                                   output, *args, **kwargs)
        result = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        sparse_decode(self.policy, layer_index(layer), query, kv_cache, attn_metadata, output, self.scale,
                      self.num_kv_heads)
        return result


def layer_index(layer: Any) -> int:
    match = _LAYER_INDEX.search("." + layer.layer_name + ".")
    return int(match.group(1)) if match else 0


def sparse_decode(selector: TokenSelector, layer: int, query: torch.Tensor, kv_cache: torch.Tensor, meta: Any,
                  output: torch.Tensor, scale: float, kv_heads: int) -> None:
    """Recompute the decode rows whose context exceeds the budget over the selector's positions."""
    starts = meta.query_start_loc.tolist()
    seq_lens = meta.seq_lens.tolist()
    for row, length in enumerate(seq_lens):
        if starts[row + 1] - starts[row] != 1 or length <= selector.budget:
            continue
        t = starts[row]
        keys, values = paged_context(kv_cache, meta.block_table[row], length)
        chosen = selector.positions(layer, row, query[t], keys, scale)
        if chosen is None:
            continue
        output[t] = attend_positions(query[t], keys, values, chosen, scale).to(output.dtype)


def attend_positions(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """Attention of one token (``query [heads, d]``) over ``positions [kv_heads, k]`` of ``keys`` / ``values``
    (``[context, kv_heads, d]``), each KV head over its own positions; returns ``[heads, d]``."""
    kv_heads = keys.shape[1]
    heads, d = query.shape
    heads_idx = torch.arange(kv_heads).unsqueeze(1)
    k = keys[positions, heads_idx].float()  # [kv_heads, k, d]
    v = values[positions, heads_idx].float()
    q = query.float().view(kv_heads, heads // kv_heads, d)
    probs = torch.softmax(torch.einsum("hgd,hkd->hgk", q, k) * scale, dim=-1)
    return torch.einsum("hgk,hkd->hgd", probs, v).reshape(heads, d)


class BlockBuffer:
    """Full-precision keys and values of the blocks still being filled, per layer, until the codec packs them.

    Keyed by block id (vLLM's block of the request's tail); a block is packed into its page when its last slot is
    written, then dropped here. At most one block per running request is live; entries of requests that ended
    mid-block are dropped least-recently-written first beyond ``capacity``. A read that misses a live block fails
    loudly rather than attend to garbage.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, list] = OrderedDict()  # block -> [keys [H, N, d], values, filled]

    def write(self, codec: KVPageCodec, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
              slot_mapping: torch.Tensor) -> None:
        _, heads, block_size, _ = kv_cache.shape
        n = slot_mapping.shape[0]
        slots = slot_mapping[:n].long()
        valid = slots >= 0
        if not bool(valid.all()):
            slots, key, value = slots[valid], key[:n][valid], value[:n][valid]
        blocks, offsets = (slots // block_size).tolist(), (slots % block_size)
        for b in sorted(set(blocks)):
            rows = torch.tensor([i for i, x in enumerate(blocks) if x == b])
            offs = offsets[rows]
            entry = self.blocks.get(b)
            if int(offs.min()) == 0:  # a block is always filled from its first slot: (re)start it
                shape = (heads, block_size, key.shape[-1])
                entry = [key.new_zeros(shape), value.new_zeros(shape), 0]
                self.blocks[b] = entry
            elif entry is None:
                continue  # a slot of a packed (prefix-cached) block recomputed: its page already holds it
            self.blocks.move_to_end(b)
            entry[0][:, offs] = key[rows].transpose(0, 1)
            entry[1][:, offs] = value[rows].transpose(0, 1)
            entry[2] = max(entry[2], int(offs.max()) + 1)
            if entry[2] == block_size:
                kv_cache[b] = codec.encode(entry[0], entry[1])
                del self.blocks[b]
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)

    def dense_context(self, codec: KVPageCodec, layer: Any, key: torch.Tensor, value: torch.Tensor,
                      kv_cache: torch.Tensor, meta: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A dense CPU cache holding every request's context (packed blocks decoded, the tail block from this
        buffer, the step's own tokens unquantized) and its block table."""
        from vllm import _custom_ops as ops

        _, heads, block_size, _ = kv_cache.shape
        d = key.shape[-1]
        seq_lens, starts = meta.seq_lens.tolist(), meta.query_start_loc.tolist()
        used = [math.ceil(length / block_size) for length in seq_lens]
        table = torch.zeros((len(seq_lens), max(used + [1])), dtype=meta.block_table.dtype)
        keys, values, slots = [], [], []
        first = 0
        full_ids = []
        for row, length in enumerate(seq_lens):
            full = length // block_size
            table[row, : used[row]] = torch.arange(first, first + used[row], dtype=table.dtype)
            full_ids += meta.block_table[row, :full].tolist()
            first += used[row]
        decoded_k, decoded_v = (codec.decode(kv_cache[torch.tensor(full_ids, dtype=torch.long)])
                                if full_ids else (None, None))
        done = 0
        for row, length in enumerate(seq_lens):
            full = length // block_size
            parts_k, parts_v = [], []
            if full:
                parts_k.append(decoded_k[done : done + full].permute(0, 2, 1, 3).reshape(-1, heads, d))
                parts_v.append(decoded_v[done : done + full].permute(0, 2, 1, 3).reshape(-1, heads, d))
                done += full
            tail = length - full * block_size
            if tail:
                block = int(meta.block_table[row, full])
                entry = self.blocks.get(block)
                if entry is None or entry[2] < tail:
                    raise RuntimeError(f"declab attention seam: the unpacked tail of block {block} is missing "
                                       "(buffer capacity exceeded?)")
                parts_k.append(entry[0][:, :tail].transpose(0, 1))
                parts_v.append(entry[1][:, :tail].transpose(0, 1))
            ctx_k, ctx_v = torch.cat(parts_k).to(key.dtype), torch.cat(parts_v).to(value.dtype)
            new = starts[row + 1] - starts[row]
            ctx_k[length - new :] = key[starts[row] : starts[row + 1]]
            ctx_v[length - new :] = value[starts[row] : starts[row + 1]]
            keys.append(ctx_k)
            values.append(ctx_v)
            base = int(table[row, 0]) * block_size
            slots.append(torch.arange(base, base + length))
        scratch = key.new_zeros((max(first, 1), heads, block_size, 2 * d))
        key_cache, value_cache = cpu_key_value_views(scratch)
        ops.cpu_attn_reshape_and_cache(torch.cat(keys), torch.cat(values), key_cache, value_cache,
                                       torch.cat(slots), layer.isa)
        return scratch, table
