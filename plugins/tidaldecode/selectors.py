"""TidalDecode's token selection (Yang et al. 2024, reading-list paper 54) and the StreamingLLM baseline (Xiao et
al. 2024: attention sinks + a recent window), as ``TokenSelector`` policies of the attention seam.

TidalDecode, position-persistent sparse attention: layers before the first selection layer attend fully; each
selection layer attends fully and ranks the context by its attention probabilities (summed over the query heads of
each KV head), keeping the ``budget`` best positions per KV head (the current token always among them); every other
layer attends only to the positions the last selection layer chose. The second selection layer is the paper's
re-selection layer. Selection runs again at every decode step (each step's query chooses its own positions).

StreamingLLM at the same budget: the first ``sinks`` positions plus the most recent ``budget - sinks`` ones, in every
layer. Positions keep their original rotary positions (no re-indexing inside the window: the contexts measured stay
within the model's trained length).

Pure torch (no vLLM); the seam calls ``positions`` for decode rows whose context exceeds the budget only.
"""

from __future__ import annotations

import torch

from declab.integrations.sdk.attention_policy import STATS, TokenSelector


def attention_probs(query: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention of ``query [heads, d]`` over ``keys [context, kv_heads, d]``, summed over the query heads
    of each KV head: ``[kv_heads, context]``."""
    kv_heads = keys.shape[1]
    heads, d = query.shape
    q = query.float().view(kv_heads, heads // kv_heads, d)
    probs = torch.softmax(torch.einsum("hgd,lhd->hgl", q, keys.float()) * scale, dim=-1)
    return probs.sum(dim=1)


def top_positions(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """The ``budget`` highest-scoring positions per KV head (``scores [kv_heads, context]``), the last (current)
    position always kept; sorted ascending."""
    scores = scores.clone()
    scores[:, -1] = torch.inf
    return scores.topk(budget, dim=-1).indices.sort(dim=-1).values


def recall(chosen: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of ``exact`` positions (``[kv_heads, k]``) that ``chosen`` holds, averaged over KV heads."""
    hits = (chosen.unsqueeze(-1) == exact.unsqueeze(-2)).any(-2).float()
    return float(hits.mean())


def parse_layers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


class TidalDecodeSelector(TokenSelector):
    def __init__(self, budget: int, selection_layers: tuple[int, ...]) -> None:
        self.budget = budget
        self.selection_layers = selection_layers
        self.chosen: dict[int, torch.Tensor] = {}  # row of this step -> positions [kv_heads, budget]

    def positions(self, layer_index, row, query, keys, scale):
        if layer_index < self.selection_layers[0]:
            return None
        if layer_index in self.selection_layers:
            self.chosen[row] = top_positions(attention_probs(query, keys, scale), self.budget)
            return None
        chosen = self.chosen[row]
        if STATS.record:
            exact = top_positions(attention_probs(query, keys, scale), self.budget)
            STATS.add("recall_sum", recall(chosen, exact))
            STATS.add("recall_count", 1)
        return chosen


class StreamingSelector(TokenSelector):
    def __init__(self, budget: int, sinks: int) -> None:
        self.budget = budget
        self.sinks = sinks

    def positions(self, layer_index, row, query, keys, scale):
        length, kv_heads = keys.shape[:2]
        recent = torch.arange(length - (self.budget - self.sinks), length)
        chosen = torch.cat([torch.arange(self.sinks), recent])
        if STATS.record:
            exact = top_positions(attention_probs(query, keys, scale), self.budget)
            STATS.add("recall_sum", recall(chosen.expand(kv_heads, -1), exact))
            STATS.add("recall_count", 1)
        return chosen.expand(kv_heads, -1)


def make_tidaldecode(settings: dict, facts: dict) -> TidalDecodeSelector:
    return TidalDecodeSelector(settings["budget"], parse_layers(settings["selection_layers"]))


def make_streaming(settings: dict, facts: dict) -> StreamingSelector:
    return StreamingSelector(settings["budget"], settings["sinks"])


def check_tidaldecode(settings: dict, facts: dict) -> None:
    where = "additional_config.declab.tidaldecode.selection_layers"
    try:
        layers = parse_layers(settings["selection_layers"])
    except ValueError:
        raise ValueError(f"{where} must be comma-separated layer numbers, got {settings['selection_layers']!r}") \
            from None
    if not layers or list(layers) != sorted(set(layers)):
        raise ValueError(f"{where} must name increasing layer numbers, got {settings['selection_layers']!r}")
    if layers[0] < 0 or layers[-1] >= facts["num_layers"]:
        raise ValueError(f"{where}: the model has layers 0..{facts['num_layers'] - 1}, got "
                         f"{settings['selection_layers']!r}")


def check_streaming(settings: dict, facts: dict) -> None:
    if settings["sinks"] >= settings["budget"]:
        raise ValueError(f"additional_config.declab.streamingllm.sinks must be < budget ({settings['budget']}), "
                         f"got {settings['sinks']}")
