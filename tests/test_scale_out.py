"""Scale-out on vLLM's own parallelism (issue #13): every plugin under ``tensor_parallel_size=2`` and a mixed plugin
load on ``declab serve --data-parallel-size 2``, on the 2-core CPU machine (one core per worker or engine core).

* Tensor parallelism: vLLM's multiprocessing executor runs the whole model runner in every worker; logits are
  all-gathered (``LogitsProcessor`` uses all-gather on every platform of 0.32), so each worker runs the router's
  logits processors, the sampler and the speculative proposer on the same full logits, and keeps its own copy of
  the per-request state (ASAp tries, Token Recycling's matrix, momentum's token graph); the engine core reads rank
  0's output. The engine core (scheduler, companion rows) is one process whatever the workers. Checked: greedy
  outputs of every logits-level plugin, of the search loops (diverse beam search, exact extraction), seeded ASAp
  samples (the trie learns across requests) and Token Recycling chain and tree are the single-worker ones, and
  the workers' plugin state is identical on both ranks.
* Data parallelism: each engine core has its own scheduler and worker; a request's companion rows are created by
  the scheduler that admits it, so they live on the same engine core. Checked: a concurrent mixed load (plain,
  momentum, extractive, asap, gcd, cad, lqcd, m3id), every request twice, spread over both engine cores, gives the
  single-engine outputs, and both cores end with no request left.

Engines: ``all_logits`` / ``all_logits_tp2``, ``tr_chain_tp2``, ``tr_tree_tp2`` (``profiles.py``); server ``dp2``.
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from engines import greedy_run

from declab.integrations.prompts import CODE_PROMPTS

pytestmark = pytest.mark.vanilla("scale_out")

PASSAGE = "Mikagro Works is headquartered in Marrator."
QUESTION = "Question: Where is Mikagro Works headquartered?\nAnswer:"
PASSAGE_2 = "By profession, Zuhandar Linhanzu was a astronomer."
QUESTION_2 = "Question: What was the profession of Zuhandar Linhanzu?\nAnswer:"
LEADING = "Question: Where is Mikagro Works headquartered? I think the answer is Pelgroyar.\nAnswer:"
BITS3 = 'root ::= ("0" | "1") ("0" | "1") ("0" | "1")'
PETS = 'root ::= " " ("cat" | "catalog" | "cattle" | "dog" | "dogma") ("." | "s.")'


def _with_context(passage: str, question: str) -> str:
    return f"Context: {passage}\n{question}"


# (name, prompt, declab arguments or None for a plain row, max_tokens): one greedy batch, offline and over HTTP.
MIXED_LOAD: tuple[tuple[str, str, dict | None, int], ...] = (
    *((f"plain{i}", p, None, 24) for i, p in enumerate(CODE_PROMPTS[:3])),
    *((f"momentum{i}", p, {"method": "momentum"}, 24) for i, p in enumerate(CODE_PROMPTS[:3])),
    ("extractive0", _with_context(PASSAGE, QUESTION), {"method": "extractive", "passage": PASSAGE}, 8),
    ("extractive1", _with_context(PASSAGE_2, QUESTION_2), {"method": "extractive", "passage": PASSAGE_2}, 8),
    ("asap_bits", "The answer is", {"method": "asap", "grammar": BITS3}, 8),
    ("gcd_bits", "The answer is", {"method": "gcd", "grammar": BITS3}, 8),
    ("asap_pets", "I saw a", {"method": "asap", "grammar": PETS}, 8),
    ("gcd_pets", "I saw a", {"method": "gcd", "grammar": PETS}, 8),
    *((f"{m}{i}", _with_context(p, q), {"method": m, "contrast_prompt": q, **extra}, 12)
      for m, extra in (("cad", {"alpha": 0.5}), ("m3id", {}))
      for i, (p, q) in enumerate(((PASSAGE, QUESTION), (PASSAGE_2, QUESTION_2)))),
    ("lqcd0", LEADING, {"method": "lqcd", "alpha": 0.5, "contrast_prompt": QUESTION}, 12),
)
ASAP_SEEDS = 8  # seeded ASAp samples at temperature 1 in one batch: they share (and update) one trie
LOGPROB_TOLERANCE = 1e-3  # search-loop log-probs, single worker vs two (float32 sums split over two workers)


# ---------------------------------------------------------------------------------------------------------------
# Scenarios (run in an engine host)


def plugin_digest(worker) -> dict:
    """A worker's plugin state: its ASAp tries (a hash of all of it, a hash of their shape, their log-values) and
    Token Recycling's matrix (hashed) if the worker has that proposer."""
    import json

    from declab.plugins.asap.core import LOCK, STORE

    with LOCK:
        tries = [STORE.get(k).to_dict() for k in sorted(STORE.keys())]
    shape = [(t["key"], t["samples"], t["nodes"]["parent"], t["nodes"]["token"], t["nodes"]["visits"]) for t in tries]
    digest = {"asap_tries": len(tries), "asap": _sha(json.dumps(tries, sort_keys=True, default=str)),
              "asap_shape": _sha(json.dumps(shape)),
              "asap_values": [v for t in tries for key in ("logp", "rest") for v in t["nodes"][key]]}
    drafter = getattr(worker.model_runner, "drafter", None)
    matrix = getattr(drafter, "matrix", None)
    if matrix is not None:
        digest["tr_seen_rows"] = int(matrix.num_seen)
        digest["tr_matrix"] = _sha(matrix.table.numpy().tobytes() + matrix.seen.numpy().tobytes())
        digest["tr_stats"] = {k: drafter.stats[k] for k in ("tree_drafts", "chain_drafts")}
    return digest


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def all_plugins(llm) -> dict:
    """The mixed greedy batch, the search loops, seeded ASAp samples; then the scheduler's and each worker's state."""
    from contrastive_requests import engine_state
    from vllm import SamplingParams

    from declab.plugins.diverse_beam.search import diverse_beam_search
    from declab.plugins.extractive.search import exact_extract

    params = [SamplingParams(temperature=0.0, max_tokens=n, extra_args={"declab": args} if args else None)
              for _, _, args, n in MIXED_LOAD]
    outs = llm.generate([p for _, p, _, _ in MIXED_LOAD], params, use_tqdm=False)
    result = {"mixed": {name: {"token_ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text}
                        for (name, *_), o in zip(MIXED_LOAD, outs)}}
    seeded = [SamplingParams(temperature=1.0, max_tokens=8, seed=s,
                             extra_args={"declab": {"method": "asap", "grammar": PETS, "namespace": "scale"}})
              for s in range(ASAP_SEEDS)]
    result["asap_seeded"] = [list(o.outputs[0].token_ids)
                             for o in llm.generate(["I saw a"] * ASAP_SEEDS, seeded, use_tqdm=False)]
    beams = diverse_beam_search(llm, list(CODE_PROMPTS[:2]), beam_width=4, num_groups=2, diversity_penalty=0.5,
                                max_tokens=8)
    result["diverse_beam"] = [[(list(b.token_ids), b.cum_logprob) for b in per_prompt] for per_prompt in beams]
    exact = exact_extract(llm, _with_context(PASSAGE, QUESTION), PASSAGE, max_span_tokens=8)
    result["exact_extract"] = (exact.span_ids, exact.logprob)
    result["scheduler"] = engine_state(llm)
    result["workers"] = llm.collective_rpc(plugin_digest)
    return result


def stats_path(worker) -> str | None:
    """Where the worker's proposer writes its statistics (None: it does not)."""
    return worker.model_runner.drafter._stats_path  # noqa: SLF001


def token_recycling_run(llm, prompts: list[str], max_tokens: int, batch1: int) -> dict:
    """``greedy_run``, each worker's Token Recycling state and statistics file."""
    return {**greedy_run(llm, prompts, max_tokens, batch1), "workers": llm.collective_rpc(plugin_digest),
            "stats_paths": llm.collective_rpc(stats_path)}


# ---------------------------------------------------------------------------------------------------------------
# Tensor parallelism


@pytest.fixture(scope="session")
def single_worker(all_logits_engine) -> dict:
    return all_logits_engine.run(all_plugins)


@pytest.fixture(scope="session")
def two_workers(all_logits_tp2_engine) -> dict:
    return all_logits_tp2_engine.run(all_plugins)


def test_logits_plugins_give_the_single_worker_greedy_outputs_on_two_workers(vanilla, single_worker, two_workers):
    assert two_workers["mixed"] == single_worker["mixed"]
    base = vanilla("scale_out")  # plain rows: also vLLM without plugins
    for i, prompt in enumerate(CODE_PROMPTS[:3]):
        assert two_workers["mixed"][f"plain{i}"]["token_ids"] == base["token_ids"][i][:24], prompt


def test_plugins_change_the_output_on_two_workers(two_workers):
    """The comparison above is not vacuous: the plugins act under tensor parallelism."""
    mixed = two_workers["mixed"]
    assert any(mixed[f"momentum{i}"]["token_ids"] != mixed[f"plain{i}"]["token_ids"] for i in range(3))
    assert re.fullmatch(r"[01]{3}", mixed["asap_bits"]["text"]) and re.fullmatch(r"[01]{3}", mixed["gcd_bits"]["text"])
    assert mixed["extractive0"]["text"].strip() in PASSAGE


def test_seeded_asap_samples_and_its_trie_are_the_single_worker_ones(single_worker, two_workers):
    assert two_workers["asap_seeded"] == single_worker["asap_seeded"]
    assert len(set(map(tuple, two_workers["asap_seeded"]))) > 1  # really sampled


def test_search_loops_give_the_single_worker_results(single_worker, two_workers):
    ref, got = single_worker["diverse_beam"], two_workers["diverse_beam"]
    assert [[ids for ids, _ in p] for p in got] == [[ids for ids, _ in p] for p in ref]
    worst = max(abs(a[1] - b[1]) for pa, pb in zip(got, ref) for a, b in zip(pa, pb))
    assert worst <= LOGPROB_TOLERANCE, worst
    print(f"diverse beam search: largest |cum_logprob difference| single vs two workers {worst:.3g}")
    assert two_workers["exact_extract"][0] == single_worker["exact_extract"][0]
    assert abs(two_workers["exact_extract"][1] - single_worker["exact_extract"][1]) <= LOGPROB_TOLERANCE


def test_each_worker_holds_the_same_plugin_state(single_worker, two_workers):
    rank0, rank1 = two_workers["workers"]
    assert rank0 == rank1  # bit for bit: the workers see the same all-gathered logits
    assert rank0["asap_tries"] >= 3
    # The single worker's tries: the same nodes and visits; their log-values within float tolerance.
    single = single_worker["workers"][0]
    assert rank0["asap_shape"] == single["asap_shape"]
    assert len(rank0["asap_values"]) == len(single["asap_values"])
    worst = max(abs(a - b) if a != b else 0.0 for a, b in zip(rank0["asap_values"], single["asap_values"]))
    assert worst <= LOGPROB_TOLERANCE, worst
    print(f"ASAp tries: largest |log-value difference| single vs two workers {worst:.3g}")


def test_companion_rows_are_freed_under_tensor_parallelism(two_workers):
    state = two_workers["scheduler"]
    assert (state["requests_left"], state["running"], state["pairs_left"]) == (0, 0, 0)


TR_ARGS = (2, 32, 1)  # prompts of the scale_out reference, tokens, prompts also run alone


def _token_recycling_checks(run: dict, base: dict, tree: bool) -> None:
    assert run["token_ids"] == base["token_ids"][: TR_ARGS[0]]
    assert run["single_token_ids"] == base["single_token_ids"][: TR_ARGS[2]]
    assert run["spec"]["num_accepted_tokens"] > 0
    ranks = run["workers"]
    assert len(ranks) == 2 and ranks[0] == ranks[1], ranks  # same matrix, same drafts on both workers
    assert ranks[0]["tr_seen_rows"] > 0
    assert (ranks[0]["tr_stats"]["tree_drafts"] > 0) == tree
    if tree:  # the profile asks for a statistics file: one writer, the first worker
        assert run["stats_paths"][0] and run["stats_paths"][1] is None, run["stats_paths"]


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_token_recycling_is_lossless_on_two_workers(mode, vanilla, tr_chain_tp2_engine, tr_tree_tp2_engine):
    base = vanilla("scale_out")
    engine = tr_chain_tp2_engine if mode == "chain" else tr_tree_tp2_engine
    prompts = base["prompts"][: TR_ARGS[0]]
    _token_recycling_checks(engine.run(token_recycling_run, prompts, TR_ARGS[1], TR_ARGS[2]), base, mode == "tree")


# ---------------------------------------------------------------------------------------------------------------
# Data parallelism (a server: vLLM refuses data_parallel_size > 1 offline)


def _completion(base_url: str, case: tuple, copy: int) -> tuple[str, int, str]:
    name, prompt, args, max_tokens = case
    body = {"model": "decoder-29m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if args and args["method"] == "asap":
        # An ASAp trie learns from every output of its (prompt, grammar, namespace) on the engine core that holds
        # it, so a second identical request may answer differently; each copy starts from an empty trie, like the
        # offline run.
        args = {**args, "namespace": f"copy{copy}"}
    if args:
        body["vllm_xargs"] = {f"declab.{k}": v for k, v in args.items()}
    response = requests.post(f"{base_url}/v1/completions", json=body, timeout=600)
    text = response.json()["choices"][0]["text"] if response.ok else response.text
    return name, response.status_code, text


def _per_engine(base_url: str, metric: str) -> dict[str, float]:
    """``{engine index: value}`` of one metric on /metrics (the label ``engine`` names the engine core)."""
    values: dict[str, float] = {}
    for line in requests.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        match = re.match(rf'{re.escape(metric)}\{{.*engine="(\d+)".*\}} (\S+)$', line)
        if match:
            values[match[1]] = values.get(match[1], 0.0) + float(match[2])
    return values


def test_data_parallel_server_serves_a_mixed_plugin_load(dp2_server, single_worker):
    expected = {name: out["text"] for name, out in single_worker["mixed"].items()}
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: _completion(dp2_server, *job),
                                [(case, copy) for copy in range(2) for case in MIXED_LOAD]))
    assert all(code == 200 for _, code, _ in results), [r for r in results if r[1] != 200]
    wrong = [(name, text, expected[name]) for name, _, text in results if text != expected[name]]
    assert not wrong, wrong
    finished = _per_engine(dp2_server, "vllm:request_success_total")
    assert set(finished) == {"0", "1"} and min(finished.values()) > 0, finished  # both engine cores served
    assert sum(_per_engine(dp2_server, "vllm:num_requests_running").values()) == 0  # companions freed on both
