"""exact-extract's exact mode (paper 55) as a search loop over engine requests.

``core.best_span`` is an exact best-first branch-and-bound over the passage's span trie; all it needs is a batched
callback ``score_fn(prefixes) -> [len(prefixes), vocab]`` of next-token log-probabilities after
``prompt + prefix``. Here that callback is a vLLM offline engine: every prefix becomes one
``TokensPrompt(prompt_ids + prefix)`` request with ``SamplingParams(max_tokens=1, temperature=0)`` asking for
log-probabilities, and one ``llm.generate`` call answers a whole batch of prefixes. Prefix caching (on by default)
keeps the repeated prompt (and the shared span prefixes) in the KV cache, so a request mostly costs its new tokens.
It only reuses *full* KV blocks: vLLM's CPU backend defaults to ``block_size=128``, longer than a short QA prompt,
so on CPU create the engine with ``block_size=32`` (the smallest the CPU attention kernel accepts; 16 fails at
start-up); on decoder-29m that halved the wall time of exact mode. GPU backends default to 16.

The answer ends where the model puts its end token: ``log p(s) = sum_i log p(s_i | s_<i) + log p(end | s)`` with
``end`` = EOS by default (the paper's definition, and the token greedy mode forces); ``end_id`` selects another
terminator, e.g. the newline token for a model that ends its answers with a line break.

Which log-probabilities. The engine's default ``logprobs_mode="raw_logprobs"`` returns ``log_softmax`` of the
model's logits before any logits processor, i.e. the plain model distribution ``best_span`` needs. The search only
ever reads, for a prefix in automaton state ``q``, ``log p(EOS)`` and ``log p(t)`` for ``t in allowed(q)``, so each
request asks for exactly those ids with vLLM 0.32's ``SamplingParams.logprob_token_ids`` (at most
``MAX_LOGPROB_TOKEN_IDS`` = 128 ids per request; the sampler gathers them from the full-vocabulary raw
log-probs). Rows are returned as ``[n, vocab]`` tensors filled with ``-inf`` except those ids (still <= 0, so the
branch-and-bound stays exact). When a state allows more than 128 tokens (long passages: the start state allows every
distinct passage token), that request asks for the full vocabulary instead with ``logprobs=-1``, which vLLM only
accepts when the engine was created with ``max_logprobs=-1`` (``ENGINE_KWARGS``; ``max_logprobs`` is validated
against the vocabulary size, and ``-1`` there means "up to the vocabulary"). ``full_vocab=True`` forces that path
for every request. ``detokenize=False`` keeps vLLM from decoding thousands of log-prob token strings per row.

The automaton is built exactly as the greedy-mode ``ExtractiveProcessor`` builds it in the router
(``build_passage_automaton`` with the tokenization variants, the served tokenizer without special tokens) and EOS is
the router's ``hf_config.eos_token_id``, so both modes search the same set of answers.

Batching across items. ``exact_extract_batch`` runs one ``best_span`` per item in a small pool of threads; every
``score_fn`` call parks its prefixes with a coordinator, which answers all parked prefixes of all items with one
``llm.generate`` as soon as every live search is waiting. ``best_span`` itself is unchanged (no second copy of the
search); the threads only interleave its engine calls.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import torch

from declab.plugins.extractive.core import SpanAutomaton, best_span, build_passage_automaton

# What an engine used for exact mode must be created with (the full-vocabulary fallback needs it).
ENGINE_KWARGS: dict[str, Any] = {"max_logprobs": -1}

try:  # vLLM 0.32: the most ids one request may name in logprob_token_ids
    from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS
except ImportError:  # pragma: no cover - other vLLM versions
    MAX_LOGPROB_TOKEN_IDS = 0

NEG_INF = float("-inf")


class ExactResult(NamedTuple):
    answer: str  # decoded span, stripped
    span_ids: list[int]
    logprob: float  # sum_i log p(s_i | s_<i) + log p(EOS | s)
    n_scored_rows: int  # prefixes the search scored (= engine requests)


@dataclass
class SearchStats:
    """Counters of one ``EngineScorer`` (cumulative)."""

    rows: int = 0  # prefixes scored (engine requests)
    generate_calls: int = 0  # llm.generate calls
    full_vocab_rows: int = 0  # rows that needed logprobs=-1
    engine_s: float = 0.0  # wall time inside llm.generate
    per_call_rows: list[int] = field(default_factory=list)


class EngineScorer:
    """Next-token log-probabilities from a vLLM ``LLM`` for (prompt, prefix) pairs."""

    def __init__(self, llm, *, full_vocab: bool = False) -> None:
        from declab.integrations.sdk.runtime import eos_token_id

        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        model_config = llm.model_config
        self.vocab_size = int(model_config.get_vocab_size())
        eos = eos_token_id(model_config)
        if eos is None:
            raise ValueError("exact-extract needs the model's eos_token_id (hf_config.eos_token_id is unset)")
        self.eos_id = int(eos)
        self.max_logprobs = int(model_config.max_logprobs)
        self.full_vocab = full_vocab or MAX_LOGPROB_TOKEN_IDS <= 0
        self.stats = SearchStats()
        self._lock = threading.Lock()

    # -- text <-> ids, exactly as the router does --------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Passage text -> ids without special tokens (the router's ``RowContext.tokenize``)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, prompt: str) -> list[int]:
        """Prompt text -> ids as ``llm.generate(str)`` tokenizes it (with special tokens if the tokenizer adds any)."""
        return list(self.tokenizer.encode(prompt))

    def automaton(self, passage: str) -> SpanAutomaton:
        return build_passage_automaton(passage, self.tokenize)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def end_token(self, stop: str | None = None) -> int:
        """The terminator id for ``end_id``: EOS for an empty ``stop``, else the first token of ``stop`` (the rule
        greedy mode's ``declab.stop`` parameter uses, e.g. ``"\\n"``)."""
        ids = self.tokenize(stop) if stop else []
        return int(ids[0]) if ids else self.eos_id

    # -- scoring -----------------------------------------------------------------------------------------------

    def _full_ok(self) -> None:
        if self.max_logprobs != -1 and self.max_logprobs < self.vocab_size:
            raise ValueError(
                "exact-extract needs full-vocabulary log-probs for this request; create the engine with "
                f"max_logprobs=-1 (declab.plugins.extractive.search.ENGINE_KWARGS), got {self.max_logprobs}"
            )

    def score(self, jobs: list[tuple[list[int], list[int], list[int] | None]]) -> list[torch.Tensor]:
        """``jobs``: ``(prompt_ids, prefix, wanted_ids or None)``; returns one ``[vocab]`` log-prob row per job
        (``-inf`` outside ``wanted_ids``; the full row when ``wanted_ids`` is None). One ``llm.generate`` call."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params, wants = [], [], []
        n_full = 0
        for prompt_ids, prefix, wanted in jobs:
            prompts.append(TokensPrompt(prompt_token_ids=list(prompt_ids) + list(prefix)))
            common = dict(max_tokens=1, temperature=0.0, detokenize=False, flat_logprobs=True)
            if self.full_vocab or wanted is None or len(wanted) > MAX_LOGPROB_TOKEN_IDS:
                self._full_ok()
                params.append(SamplingParams(logprobs=-1, **common))
                wants.append(None)
                n_full += 1
            else:
                ids = sorted(set(int(t) for t in wanted))
                params.append(SamplingParams(logprob_token_ids=ids, **common))
                wants.append(ids)
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        rows = []
        for out, ids in zip(outs, wants):
            lp = out.outputs[0].logprobs
            start, end = lp.start_indices[0], lp.end_indices[0]
            row = torch.full((self.vocab_size,), NEG_INF, dtype=torch.float64)
            got_ids = torch.tensor(lp.token_ids[start:end], dtype=torch.long)
            got = torch.tensor(lp.logprobs[start:end], dtype=torch.float64)
            keep = got_ids < self.vocab_size
            row[got_ids[keep]] = got[keep]
            if ids is not None and not set(ids) <= set(lp.token_ids[start:end]):
                # A requested id missing from the reply would silently read as -inf: refuse instead.
                raise RuntimeError(f"vLLM returned no log-prob for some requested ids of {ids[:8]}...")
            rows.append(row)
        with self._lock:
            st = self.stats
            st.rows += len(jobs)
            st.generate_calls += 1
            st.full_vocab_rows += n_full
            st.engine_s += dt
            st.per_call_rows.append(len(jobs))
        return rows

    def wanted(self, sam: SpanAutomaton, prefix: Sequence[int], max_len: int, end_id: int | None = None) -> list[int]:
        """The ids ``best_span`` reads after ``prefix``: the end token (EOS unless ``end_id``) and, below
        ``max_len``, the tokens extending the span."""
        end = self.eos_id if end_id is None else end_id
        state = sam.walk(prefix)
        toks = [] if state is None or len(prefix) >= max_len else sam.allowed(state)
        return [end, *toks] if end not in toks else list(toks)

    def score_fn(self, prompt_ids: list[int], sam: SpanAutomaton, max_len: int, end_id: int | None = None):
        """A ``best_span`` callback for one item that calls the engine directly."""

        def fn(prefixes: list[list[int]]) -> torch.Tensor:
            jobs = [(prompt_ids, p, self.wanted(sam, p, max_len, end_id)) for p in prefixes]
            return torch.stack(self.score(jobs))

        return fn


# ----------------------------------------------------------------------------------------------------------------
# Interleaving many searches into shared engine calls
# ----------------------------------------------------------------------------------------------------------------


class _Parked:
    __slots__ = ("jobs", "rows", "error", "event")

    def __init__(self, jobs) -> None:
        self.jobs = jobs
        self.rows: list[torch.Tensor] | None = None
        self.error: BaseException | None = None
        self.event = threading.Event()


class _Coordinator:
    """Answers the parked ``score_fn`` calls of all live searches with one engine call once every search waits."""

    def __init__(self, scorer: EngineScorer) -> None:
        self.scorer = scorer
        self.cond = threading.Condition()
        self.running = 0  # searches that are neither parked nor finished
        self.parked: list[_Parked] = []

    def start_worker(self) -> None:
        with self.cond:
            self.running += 1

    def worker_done(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()

    def park(self, jobs) -> list[torch.Tensor]:
        req = _Parked(jobs)
        with self.cond:
            self.parked.append(req)
            self.running -= 1
            self.cond.notify_all()
        req.event.wait()
        if req.error is not None:
            raise req.error
        assert req.rows is not None
        return req.rows

    def serve(self, threads: list[threading.Thread]) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.running == 0)
                batch, self.parked = self.parked, []
                if not batch:
                    if not any(t.is_alive() for t in threads):
                        return
                    continue  # pragma: no cover - a worker is between worker_done and thread exit
                self.running += len(batch)
            jobs = [j for req in batch for j in req.jobs]
            try:
                rows = self.scorer.score(jobs)
            except BaseException as e:  # noqa: BLE001 - handed to every waiting search
                for req in batch:
                    req.error = e
                    req.event.set()
                continue
            pos = 0
            for req in batch:
                req.rows = rows[pos : pos + len(req.jobs)]
                pos += len(req.jobs)
                req.event.set()


def exact_extract_batch(
    llm,
    items: Sequence[tuple[str, str]],
    *,
    max_span_tokens: int = 32,
    batch_size: int = 32,
    concurrency: int = 16,
    scorer: EngineScorer | None = None,
    end_id: int | None = None,
) -> list[ExactResult]:
    """exact-extract for many ``(prompt, passage)`` items; the searches share engine calls.

    Up to ``concurrency`` searches run at once; each ``best_span`` batch is ``batch_size`` prefixes, so one engine
    call carries at most ``concurrency * batch_size`` requests. Results are in item order.
    """
    scorer = scorer or EngineScorer(llm)
    end = scorer.eos_id if end_id is None else int(end_id)
    if not items:
        return []
    # Tokenizer work stays on this thread; the search threads only run best_span and park engine calls.
    prompt_ids = [scorer.prompt_ids(prompt) for prompt, _ in items]
    automata = [scorer.automaton(passage) for _, passage in items]
    coord = _Coordinator(scorer)
    found: list[tuple[list[int], float, int] | None] = [None] * len(items)
    errors: list[BaseException] = []
    next_item = iter(range(len(items)))
    take = threading.Lock()

    def one(i: int) -> tuple[list[int], float, int]:
        pid, sam = prompt_ids[i], automata[i]

        def fn(prefixes: list[list[int]]) -> torch.Tensor:
            jobs = [(pid, p, scorer.wanted(sam, p, max_span_tokens, end)) for p in prefixes]
            return torch.stack(coord.park(jobs))

        return best_span(sam, fn, max_span_tokens, end, batch_size=batch_size)

    def worker() -> None:
        try:
            while True:
                with take:
                    i = next(next_item, None)
                if i is None:
                    return
                found[i] = one(i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)
        finally:
            coord.worker_done()

    threads = [threading.Thread(target=worker, daemon=True, name=f"exact-extract-{k}")
               for k in range(max(1, min(concurrency, len(items))))]
    for t in threads:
        coord.start_worker()
    for t in threads:
        t.start()
    coord.serve(threads)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    out = []
    for f in found:
        assert f is not None
        span, lp, rows = f
        out.append(ExactResult(scorer.decode(span).strip(), span, lp, rows))
    return out


def exact_extract(
    llm, prompt: str, passage: str, *, max_span_tokens: int = 32, batch_size: int = 32,
    scorer: EngineScorer | None = None, end_id: int | None = None,
) -> ExactResult:
    """The most probable span of ``passage`` as the answer to ``prompt``:
    ``(answer_text, span_ids, logprob, n_scored_rows)``. ``llm`` is a ``vllm.LLM`` (see ``ENGINE_KWARGS``).

    ``logprob = sum_i log p(s_i | prompt, s_<i) + log p(end | prompt, s)`` with ``end`` the model's EOS (the
    paper's definition, and the token greedy mode forces) unless ``end_id`` names another terminator (e.g. the
    newline token for a model that ends its answers with a line break)."""
    scorer = scorer or EngineScorer(llm)
    end = scorer.eos_id if end_id is None else int(end_id)
    prompt_ids = scorer.prompt_ids(prompt)
    sam = scorer.automaton(passage)
    span, lp, rows = best_span(sam, scorer.score_fn(prompt_ids, sam, max_span_tokens, end), max_span_tokens,
                               end, batch_size=batch_size)
    return ExactResult(scorer.decode(span).strip(), span, lp, rows)


def brute_force_rows(sam: SpanAutomaton, max_span_tokens: int, eos_id: int) -> tuple[int, int]:
    """``(distinct spans, rows)`` that scoring every span on its own costs (``sum_s |s| + 1`` rows)."""
    from declab.plugins.extractive.core import all_spans

    spans = all_spans(sam, max_span_tokens, eos_id)
    return len(spans), sum(len(s) + 1 for s in spans)


__all__ = [
    "ENGINE_KWARGS",
    "EngineScorer",
    "ExactResult",
    "exact_extract",
    "exact_extract_batch",
    "brute_force_rows",
]
