"""The tree-verification seam: what its three patches share, its statistics, and its verifier listeners.

vLLM 0.32 verifies one draft chain per request. A proposer that drafts trees (``DraftTree`` from ``draft``, see
``declab.integrations.sdk.proposer``) opens this seam (``DeclabProposer.open_seams(trees=True)``); the patches in
``declab/patches/tree_verification.py`` then, for every request the proposer drafted as a tree:

1. ``tree_inputs``: set the merged sequence's positions to ``context + depth`` and publish the step's tree
   requests here (``SEAM.step``), each with the verifier that will decide it;
2. ``tree_attention_cpu``: recompute those rows with the tree mask on vLLM's CPU attention backend and keep their
   keys and values;
3. ``tree_verifier``: let the request's ``TreeVerifier`` choose the accepted path, commit it, and move the kept
   keys and values of the accepted nodes to their committed slots (counted in ``SEAM.stats``).

Verifiers are listeners: ``SEAM.subscribe(verifier)`` puts a verifier before the ones already there, and each tree
request is decided by the first verifier whose ``accepts(sampling_params)`` is true. Two are built in, so they are
on wherever the seam is open: ``GreedyTreeVerifier`` (greedy requests) and ``SamplingTreeVerifier`` (temperature
> 0 with top-k / top-p / min-p / seed: ``tree_sampling.verify_tree`` over the target's distribution processed by
vLLM's own sampling functions, with the drafts' ``DraftTree`` and its draft probabilities). Both refuse requests
whose logits something else changes or reports (logprobs, penalties, logit bias, allowed / bad words,
``min_tokens``, structured output, ``extra_args``): those get chains. A proposer asks ``SEAM.verifier_for(params)
is not None`` (``DeclabProposer.tree_verifiable``) before drafting a tree for a request.

Torch only at import; the start-up checks import vLLM when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from declab.integrations.sdk.tree_sampling import NodeRule, verify_tree
from declab.integrations.sdk.trees import (DraftTree, committed_tokens, cpu_key_value_views, longest_accepted_path,
                                          paged_context)

# The patches that open this seam (declab.patches.registry() names), applied in the worker.
TREE_VERIFICATION_PATCHES = ("tree_inputs", "tree_attention_cpu", "tree_verifier")

GREEDY_EPS = 1e-5  # vLLM's greedy threshold (vllm.sampling_params._SAMPLING_EPS)


class TreeVerifier:
    """Listener of the tree-verification seam: decides which nodes of a tree request the target accepts."""

    def accepts(self, params: Any) -> bool:
        """Whether this verifier is exact for a request with these ``SamplingParams``."""
        raise NotImplementedError

    def verify(self, request: "TreeRequest", drafts: list[int], logits: torch.Tensor,
               sampling_metadata: Any) -> tuple[list[int], list[int]]:
        """Return ``(path, tokens)``: the accepted node indices, root first, and the tokens to commit (the accepted
        drafts plus one token the target chose after the last of them).

        ``drafts``: the request's draft nodes in BFS order (the root, node 0, excluded); ``logits``: its target
        logits rows ``[1 + len(drafts), V]``, node order; ``sampling_metadata``: vLLM's ``SamplingMetadata`` of
        the step (per-request generators live there). Runs before vLLM's rejection sampler, which may change the
        logits in place.
        """
        raise NotImplementedError


def logits_untouched(params: Any) -> bool:
    """Nothing but temperature / top-k / top-p / min-p acts on the request's logits, and nothing reports them: no
    logprobs, penalties, logit bias, allowed or bad words, ``min_tokens``, structured output or ``extra_args``
    (vLLM's rejection sampler applies some of those per draft position; a tree verifier would have to as well)."""
    return (
        params is not None
        and params.logprobs is None
        and params.presence_penalty == 0.0 and params.frequency_penalty == 0.0
        and params.repetition_penalty == 1.0
        and not params.logit_bias and not params.allowed_token_ids and not params.bad_words
        and params.min_tokens == 0 and params.structured_outputs is None and not params.extra_args
    )


class GreedyTreeVerifier(TreeVerifier):
    """Greedy acceptance (``trees.longest_accepted_path`` on the argmax of the raw logits).

    Exact for greedy requests with ``logits_untouched``: for those, the argmax of the raw logits is exactly what
    vanilla greedy decoding picks."""

    def accepts(self, params: Any) -> bool:
        return logits_untouched(params) and params.temperature < GREEDY_EPS

    def verify(self, request, drafts, logits, sampling_metadata):
        argmax = logits.argmax(dim=-1).tolist()
        nodes = [-1] + drafts  # the root's token is not needed: it is always accepted
        path = longest_accepted_path(nodes, request.parents, argmax)
        return path, committed_tokens(nodes, path, argmax)


class SamplingTreeVerifier(TreeVerifier):
    """Tree verification at temperature > 0 (``tree_sampling.verify_tree``) for requests with ``logits_untouched``.

    The target's distribution after a node is what vLLM's sampler would draw from (``processed_logits``: vLLM's
    temperature division, min-p rule and ``apply_top_k_top_p``, with the step's per-request values). Randomness
    (``EngineDraws``): one seed per committed position, drawn as vLLM's CPU sampler draws it for each token (from
    the request's generator in ``sampling_metadata.generators`` if it is seeded), and a token drawn from the target
    with vLLM's own Gumbel-max kernel on that seed. A seeded request therefore consumes its generator exactly as
    plain decoding does, one draw per token, whatever the drafts and the batch: with deterministic drafts (point
    masses) it commits the tokens plain seeded sampling would. The tree-verifier patch keeps vLLM's rejection
    sampler, which still runs on the whole batch, from drawing from these generators.

    ``rule``: a ``tree_sampling.NodeRule`` used for every tree instead of the one matching its drafting (tests give
    it a deliberately biased rule)."""

    def __init__(self, rule: NodeRule | None = None) -> None:
        self.rule = rule

    def accepts(self, params: Any) -> bool:
        return logits_untouched(params) and params.temperature >= GREEDY_EPS

    def verify(self, request, drafts, logits, sampling_metadata):
        n = len(request.parents)
        tree = request.tree
        draft_probs = None if tree is None or tree.draft_probs is None else tree.draft_probs[:n]
        tree = DraftTree([-1] + list(drafts), tuple(request.parents), draft_probs=draft_probs,
                         children_drawn="deterministic" if tree is None else tree.children_drawn,
                         rule="recursive" if tree is None else tree.rule)
        target = TargetRows(logits, request.row, sampling_metadata, float(getattr(request.params, "min_p", 0.0)))
        generator = sampling_metadata.generators.get(request.row)
        return verify_tree(tree, target.logits, lambda depth: EngineDraws(generator), rule=self.rule)


class TargetRows:
    """The target's processed logits after each node of one tree request, computed on first use."""

    def __init__(self, logits: torch.Tensor, row: int, sampling_metadata: Any, min_p: float) -> None:
        self.raw = logits
        self.temperature = sampling_metadata.temperature[row : row + 1]
        self.top_k = None if sampling_metadata.top_k is None else sampling_metadata.top_k[row : row + 1]
        self.top_p = None if sampling_metadata.top_p is None else sampling_metadata.top_p[row : row + 1]
        self.min_p = min_p
        self._rows: dict[int, torch.Tensor] = {}

    def logits(self, node: int) -> torch.Tensor:
        if node not in self._rows:
            self._rows[node] = processed_logits(self.raw[node : node + 1], self.temperature, self.top_k, self.top_p,
                                                self.min_p)[0]
        return self._rows[node]


def processed_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor | None,
                     top_p: torch.Tensor | None, min_p: float = 0.0) -> torch.Tensor:
    """Logits ``[rows, V]`` as vLLM's sampler draws from them (``Sampler.sample``): float32, divided by the
    temperature (``Sampler.apply_temperature``), min-p (``MinPLogitsProcessor.apply``'s rule; vLLM 0.32 refuses
    min-p under speculative decoding, so only direct callers pass it), then vLLM's ``apply_top_k_top_p``."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
    from vllm.v1.sample.sampler import Sampler

    x = Sampler.apply_temperature(logits.to(torch.float32).clone(), temperature, all_random=True)
    if min_p > 0.0:
        probs = torch.softmax(x, dim=-1)
        x.masked_fill_(probs < probs.amax(dim=-1, keepdim=True) * min_p, float("-inf"))
    return apply_top_k_top_p(x, top_k, top_p)


class EngineDraws:
    """The randomness of one committed position: the seed vLLM's CPU sampler draws per token
    (``TopKTopPSampler.forward_cpu``), used for the token (``fused_gumbel_argmax``) and, through a generator made
    from it, for the acceptance tests."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.seed = torch.randint(0, 2**31, (1,), generator=generator, dtype=torch.long)
        self._tests: torch.Generator | None = None

    def sample(self, logits: torch.Tensor) -> int:
        return int(torch.ops._C.fused_gumbel_argmax(logits.to(torch.float32).reshape(1, -1).contiguous(), self.seed))

    def accept(self, probability: float) -> bool:
        if self._tests is None:
            self._tests = torch.Generator().manual_seed(int(self.seed) * 0x9E3779B1 + 1)
        return float(torch.rand((), dtype=torch.float64, generator=self._tests)) < probability


@dataclass
class TreeRequest:
    """One request verified as a tree in the current step."""

    row: int  # batch row
    query_start: int  # index of the root in the step's flattened tokens
    context: int  # committed tokens before the root (the root's position)
    parents: list[int]  # merged sequence, root first: 1 + the drafts vLLM scheduled (a BFS prefix of the tree)
    verifier: TreeVerifier
    tree: DraftTree | None = None  # the proposer's whole tree (draft probabilities, how children were drawn)
    params: Any = None  # the request's SamplingParams


@dataclass
class TreeStep:
    requests: list[TreeRequest]
    num_tokens: int  # tokens of the step: a forward pass of another size (a dummy run) is not this step
    # per attention layer: (impl, layer, kv_cache, keys, values, slots) of the tree rows, kept for relocation
    kept: list[tuple[Any, Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


@dataclass
class TreeVerificationStats:
    verified_trees: int = 0  # tree requests verified
    relocated_paths: int = 0  # accepted paths that left the tree's first branch (their KV had to move)


class TreeVerificationSeam:
    """The tree step being executed by this worker process (one runner per process), counters and verifiers."""

    def __init__(self) -> None:
        self.step: TreeStep | None = None
        self.stats = TreeVerificationStats()
        self._verifiers: list[TreeVerifier] = [SamplingTreeVerifier(), GreedyTreeVerifier()]

    def subscribe(self, verifier: TreeVerifier) -> None:
        """Ask ``verifier`` before the ones subscribed earlier and before the built-in ones."""
        if verifier not in self._verifiers:
            self._verifiers.insert(0, verifier)

    def unsubscribe(self, verifier: TreeVerifier) -> None:
        if verifier in self._verifiers:
            self._verifiers.remove(verifier)

    def verifier_for(self, params: Any) -> TreeVerifier | None:
        return next((v for v in self._verifiers if v.accepts(params)), None)


SEAM = TreeVerificationSeam()


def check_cpu_cache_layout(isa: str, num_kv_heads: int = 2, head_size: int = 64, block_size: int = 32, *,
                           what: str = "tree verification", instead: str = "draft chains") -> None:
    """Write known keys and values with vLLM's CPU cache writer and read them back with ``paged_context``;
    ``ValueError`` (naming ``what`` and what to use ``instead``) if the layout is not the one the seam reads."""
    from vllm import _custom_ops as ops

    gen = torch.Generator().manual_seed(0)
    cache = torch.zeros(3, num_kv_heads, block_size, 2 * head_size)
    key_cache, value_cache = cpu_key_value_views(cache)
    length = block_size + 5
    keys = torch.randn(length, num_kv_heads, head_size, generator=gen)
    values = torch.randn(length, num_kv_heads, head_size, generator=gen)
    block_ids = torch.tensor([2, 0, 1])
    slots = torch.cat([2 * block_size + torch.arange(block_size), torch.arange(5)])
    ops.cpu_attn_reshape_and_cache(keys, values, key_cache, value_cache, slots, isa)
    got_k, got_v = paged_context(cache, block_ids, length)
    if not (torch.equal(got_k, keys) and torch.equal(got_v, values)):
        raise ValueError(
            f"{what} reads the paged KV cache in vLLM 0.32's CPU 'vec' layout; this engine's CPU attention "
            f"(isa={isa!r}) stores it differently. {instead[:1].upper()}{instead[1:]}."
        )


def check_tree_engine(vllm_config: Any, *, what: str, instead: str) -> None:
    """Refuse (``ValueError``) an engine the seam cannot serve: it patches vLLM's CPU attention backend and reads
    its unquantized paged cache. ``what`` names the caller's tree mode, ``instead`` what to use otherwise."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        raise ValueError(f"{what} patches vLLM's CPU attention backend and runs on CPU only; {instead} on GPU")
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    model = vllm_config.model_config
    cache = vllm_config.cache_config
    if str(cache.cache_dtype) != "auto":
        raise ValueError(f"{what} needs an unquantized KV cache, got {cache.cache_dtype!r}")
    isa = _get_attn_isa(model.dtype, cache.block_size, model.get_head_size(), cache.cache_dtype)
    check_cpu_cache_layout(isa, head_size=model.get_head_size(), block_size=cache.block_size, what=what,
                           instead=instead)
