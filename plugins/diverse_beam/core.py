"""Diverse Beam Search (Vijayakumar et al., arXiv 1610.02424), pure Python: no torch, no vLLM.

The search is driven by a callback that returns the top log-probabilities of the next token for a batch of token
sequences (one engine step). The engine adapters live in ``search.py``.

Semantics (chosen so that ``num_groups=1, diversity_penalty=0`` is *exactly* vLLM 0.32's ``LLM.beam_search``, see
``vllm/entrypoints/generate/beam_search/offline.py``):

* A beam's sequence is prompt + generated tokens; its score is vLLM's sort key
  ``cum_logprob / max(len(sequence) - [last token is EOS], 1) ** length_penalty`` (the prompt counts in the length).
* Every step asks the callback once for all live beams of all groups of all prompts (identical sequences are asked
  once). Each returned entry ``{token_id: logprob}`` is used in its iteration order (vLLM: the sampled token first,
  then the top-``2*beam_width`` by rank), which decides ties.
* Group ``g`` (``beam_width / num_groups`` beams) expands each of its beams by every returned token; a candidate
  ending in EOS (unless ``ignore_eos``) goes straight to the group's finished list, the others are ranked by
  ``score(sequence, cum_logprob - diversity_penalty * h)`` with Python's stable ``sorted(..., reverse=True)``, and
  the best ``beam_width / num_groups`` are kept. ``h`` is the Hamming diversity term of the paper: how many beams
  kept by groups ``0..g-1`` *at this step* end in the candidate token. The penalty only steers the selection; the
  beam keeps its true ``cum_logprob``.
* After ``max_tokens`` steps (or when no beam is live), each group returns the best ``beam_width / num_groups`` of
  its finished + live beams; the ``beam_width`` results of a prompt are sorted by score, best first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

# next_logprobs(sequences) -> one {token_id: logprob} per sequence (each sequence is prompt + generated tokens).
NextLogprobs = Callable[[list[list[int]]], Sequence[Mapping[int, float]]]


@dataclass
class Beam:
    """One returned hypothesis. ``token_ids`` are the generated tokens only (EOS included when it ended there)."""

    token_ids: list[int]
    cum_logprob: float
    score: float  # vLLM's beam sort key: cum_logprob / length ** length_penalty (length counts the prompt)
    group: int
    finish_reason: str  # "stop" (ended with EOS) or "length"
    text: str | None = None  # filled by the adapters

    def as_dict(self) -> dict[str, Any]:
        return {
            "token_ids": list(self.token_ids),
            "cum_logprob": self.cum_logprob,
            "score": self.score,
            "group": self.group,
            "finish_reason": self.finish_reason,
            "text": self.text,
        }


def beam_score(sequence: Sequence[int], cum_logprob: float, eos_token_id: int | None, length_penalty: float) -> float:
    """vLLM 0.32 ``get_beam_search_score``: the trailing EOS does not count in the length; the prompt does."""
    seq_len = len(sequence)
    if seq_len and sequence[-1] == eos_token_id:
        seq_len -= 1
    return cum_logprob / (max(seq_len, 1) ** length_penalty)


def check_params(
    *,
    beam_width: Any,
    num_groups: Any,
    diversity_penalty: Any,
    max_tokens: Any,
    length_penalty: Any = 1.0,
    ignore_eos: Any = False,
    prefix: str = "declab",
) -> dict[str, Any]:
    """Validate against the plugin's ``ParamSpec``s (``ValueError`` naming the parameter) plus the cross-check that
    ``num_groups`` divides ``beam_width``. Returns the coerced values."""
    from declab.integrations.sdk.params import resolve_params
    from declab.plugins.diverse_beam.spec import SPEC

    given = dict(
        beam_width=beam_width,
        num_groups=num_groups,
        diversity_penalty=diversity_penalty,
        max_tokens=max_tokens,
        length_penalty=length_penalty,
        ignore_eos=ignore_eos,
    )
    out = resolve_params(SPEC.params, given, prefix=prefix)
    if out["beam_width"] % out["num_groups"] != 0:
        raise ValueError(
            f"{prefix}.num_groups must divide {prefix}.beam_width, got num_groups={out['num_groups']} "
            f"and beam_width={out['beam_width']}"
        )
    return out


@dataclass
class _Hyp:
    seq: list[int]  # prompt + generated
    cum: float


@dataclass
class _Group:
    beams: list[_Hyp]
    finished: list[_Hyp] = field(default_factory=list)


class _Instance:
    """The search state of one prompt: ``num_groups`` groups that start from the same prompt."""

    def __init__(self, prompt: Sequence[int], num_groups: int) -> None:
        self.prompt_len = len(prompt)
        self.groups = [_Group([_Hyp(list(prompt), 0.0)]) for _ in range(num_groups)]


def diverse_beam_search_batch(
    prompts: Sequence[Sequence[int]],
    next_logprobs: NextLogprobs,
    *,
    beam_width: int,
    num_groups: int = 1,
    diversity_penalty: float = 0.0,
    max_tokens: int,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    ignore_eos: bool = False,
) -> list[list[Beam]]:
    """Diverse beam search for several prompts (token ids) at once; one ``next_logprobs`` call per step.

    Returns, per prompt, ``beam_width`` beams (fewer only if the search ran dry) sorted by ``Beam.score``, best
    first (stable: among equal scores, lower group first).
    """
    p = check_params(
        beam_width=beam_width,
        num_groups=num_groups,
        diversity_penalty=diversity_penalty,
        max_tokens=max_tokens,
        length_penalty=length_penalty,
        ignore_eos=ignore_eos,
    )
    beam_width, num_groups, max_tokens = p["beam_width"], p["num_groups"], p["max_tokens"]
    diversity_penalty, length_penalty, ignore_eos = p["diversity_penalty"], p["length_penalty"], p["ignore_eos"]
    if eos_token_id is not None and (isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int)):
        raise ValueError(f"declab.eos_token_id must be an integer or None, got {eos_token_id!r}")
    group_size = beam_width // num_groups

    def key(h: _Hyp) -> float:
        return beam_score(h.seq, h.cum, eos_token_id, length_penalty)

    instances = [_Instance(list(map(int, prompt)), num_groups) for prompt in prompts]

    for _ in range(max_tokens):
        # One batched request for every live beam (identical sequences, e.g. the prompt at step 0, asked once).
        index: dict[tuple[int, ...], int] = {}
        batch: list[list[int]] = []
        for inst in instances:
            for grp in inst.groups:
                for h in grp.beams:
                    t = tuple(h.seq)
                    if t not in index:
                        index[t] = len(batch)
                        batch.append(h.seq)
        if not batch:
            break
        results = list(next_logprobs(batch))
        if len(results) != len(batch):
            raise RuntimeError(f"next_logprobs returned {len(results)} entries for {len(batch)} sequences")

        for inst in instances:
            selected: dict[int, int] = {}  # token -> times chosen by earlier groups at this step (Hamming term)
            for g, grp in enumerate(inst.groups):
                if not grp.beams:
                    continue
                candidates: list[tuple[_Hyp, float]] = []  # (hypothesis, penalised cumulative logprob)
                for h in grp.beams:
                    for token_id, logprob in results[index[tuple(h.seq)]].items():
                        token_id = int(token_id)
                        new = _Hyp(h.seq + [token_id], h.cum + float(logprob))
                        if token_id == eos_token_id and not ignore_eos:
                            grp.finished.append(new)
                        else:
                            pen = diversity_penalty * selected.get(token_id, 0) if g else 0.0
                            candidates.append((new, new.cum - pen if pen else new.cum))
                ranked = sorted(
                    candidates,
                    key=lambda c: beam_score(c[0].seq, c[1], eos_token_id, length_penalty),
                    reverse=True,
                )
                grp.beams = [c[0] for c in ranked[:group_size]]
                for h in grp.beams:
                    selected[h.seq[-1]] = selected.get(h.seq[-1], 0) + 1

    outputs: list[list[Beam]] = []
    for inst in instances:
        beams: list[Beam] = []
        for g, grp in enumerate(inst.groups):
            best = sorted(grp.finished + grp.beams, key=key, reverse=True)[:group_size]
            for h in best:
                gen = h.seq[inst.prompt_len :]
                stop = bool(gen) and gen[-1] == eos_token_id and not ignore_eos
                beams.append(Beam(gen, h.cum, key(h), g, "stop" if stop else "length"))
        outputs.append(sorted(beams, key=lambda b: b.score, reverse=True))
    return outputs


def diverse_beam_search(
    prompt: Sequence[int],
    next_logprobs: NextLogprobs,
    *,
    beam_width: int,
    num_groups: int = 1,
    diversity_penalty: float = 0.0,
    max_tokens: int,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    ignore_eos: bool = False,
) -> list[Beam]:
    """Diverse beam search for one prompt (token ids); see ``diverse_beam_search_batch``."""
    return diverse_beam_search_batch(
        [prompt],
        next_logprobs,
        beam_width=beam_width,
        num_groups=num_groups,
        diversity_penalty=diversity_penalty,
        max_tokens=max_tokens,
        length_penalty=length_penalty,
        eos_token_id=eos_token_id,
        ignore_eos=ignore_eos,
    )[0]


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """distinct-n over a set of outputs: unique n-grams / all n-grams, pooled over the sequences (0 if none)."""
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
