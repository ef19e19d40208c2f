"""What an attention plugin implements for the attention seam (``declab.integrations.sdk.attention``): a
``KVPageCodec`` or a ``TokenSelector``. Torch only (no vLLM), so a plugin's core stays testable without an engine.
"""

from __future__ import annotations

import torch


class KVPageCodec:
    """How a block of keys and values is stored in a page: ``[heads, block_size, cell_bytes()]`` of ``uint8``."""

    def cell_bytes(self) -> int:
        raise NotImplementedError

    def encode(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``keys``, ``values``: ``[heads, block_size, head_size]`` -> page ``[heads, block_size, cell_bytes]``."""
        raise NotImplementedError

    def decode(self, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pages ``[n, heads, block_size, cell_bytes]`` -> keys, values ``[n, heads, block_size, head_size]``."""
        raise NotImplementedError


class TokenSelector:
    """Which cached positions a decode token attends to, per layer. ``budget``: positions kept per KV head."""

    budget: int

    def positions(self, layer_index: int, row: int, query: torch.Tensor, keys: torch.Tensor,
                  scale: float) -> torch.Tensor | None:
        """Positions ``[kv_heads, budget]`` the row attends to in this layer, or None for full attention.
        ``query``: ``[heads, head_size]``; ``keys``: ``[context, kv_heads, head_size]``."""
        raise NotImplementedError


class AttentionStats:
    """Counters a selector may keep (e.g. recall of its choice), read by ``declab bench attention``."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.record = False  # selectors compute their statistics only when asked (extra work per layer)

    def add(self, name: str, value: float) -> None:
        self.values[name] = self.values.get(name, 0.0) + float(value)


STATS = AttentionStats()
