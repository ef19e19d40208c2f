"""``declab bench grammar``: ASAp vs GCD exactness (paper 65) and JSON-Schema structured output (paper 35).

Declared by the ASAp plugin (``BenchEntry(name="grammar", paper=35)``: this benchmark is the reading list's
JSONSchemaBench).

Three parts (``--parts``, default all), each in child processes of its own, one engine at a time:

* ``kl``: Grammar-Aligned Decoding's central claim (Park et al. 2024, reading-list paper 65). For the finite
  grammars of ``grammar_reference.EXPERIMENTS`` the exact grammar-conditioned distribution is enumerated with
  transformers; ``asap`` and ``gcd`` then sample ``--kl-n`` outputs each through one vLLM engine (temperature 1,
  engine seed, no per-request seeds) and KL(empirical of the first N samples || exact) is reported for every N of
  ``--checkpoints`` (log-log plot). GCD's KL tends to KL(GCD's exact distribution || exact), not to 0.
* ``schema``: JSONSchemaBench-style evaluation (Geng et al. 2025, reading-list paper 35) on the official
  JSON-Schema-Test-Suite (``../shared/eval/json_schema_test_suite/draft2020-12``: 46 files, 383 schemas). For each
  schema and backend: does it compile, and are ``--samples`` outputs of the prompt ``PROMPT`` (temperature 1,
  ``--max-tokens``) valid JSON that ``jsonschema`` accepts? Outputs cut by ``max_tokens`` (finish reason
  ``length``: the grammar was not completed) are counted apart from invalid ones. Backends: vLLM 0.32's built-in
  structured outputs (``xgrammar``, ``guidance``, ``outlines``; one engine each, since vLLM takes the backend per
  engine) and ``gcd`` / ``asap`` through the declab router (one engine, alternating which goes first). Right after
  each schema's batches the engine decodes an unconstrained batch of the same prompt and size, so time to first
  token (TTFT) and time per output token (TPOT) are compared with unconstrained decoding under the same load (the
  2-core machine is shared; load changes from minute to minute): medians over schemas of paired values. For
  ``gcd`` / ``asap`` the time spent in the row processors is measured as well (far less noisy than TPOT): ASAp's
  per-token cost against GCD's is the acceptance ratio (at most 2x).
* ``budget``: ASAp's state under ``--budget-requests`` distinct (prompt, grammar) pairs with a small trie budget
  (``DECLAB_ASAP_TRIE_BUDGET_MB``): the store's charged bytes (after every batch, and their peak) and the bytes its
  objects really hold, read in the worker (the engine runs in-process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).

Requests are driven through ``LLM.llm_engine`` (``add_request`` / ``step``) so that a request rejected at admission
fails alone and per-request timings are read at each step. Output: ``<out>/grammar.json`` + ``.png``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from declab.integrations.sdk.bench import (
    CPU_ENGINE_KWARGS,
    ChildCall,
    add_option,
    call_in_child,
    default_model,
    eval_file,
    kl_divergence,
)
from declab.plugins.asap.grammar_reference import EXPERIMENTS

MODULE = "declab.plugins.asap.bench"  # children run child_kl / child_schema / child_budget of this module

PARTS = ("kl", "schema", "budget")
VLLM_BACKENDS = ("xgrammar", "guidance", "outlines")
DECLAB_METHODS = ("gcd", "asap")
ALL_BACKENDS = VLLM_BACKENDS + DECLAB_METHODS
PLAIN = "plain"
PLAIN_MAX_TOKENS = 32  # unconstrained baseline batches: enough decode steps for a median, half the cost of 64
PROMPT = "Write a JSON value:\n"
SUITE = ("json_schema_test_suite", "draft2020-12")
CHECKPOINTS = (100, 300, 1000, 3000)

# Outcome of one generated output (or one request that never ran).
VALID, INVALID, UNFINISHED, NOT_COMPILED = "valid", "invalid", "unfinished", "not_compiled"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_option(parser, "--model", default=None, help="model path (default: decoder-29m)")
    add_option(parser, "--out", default="bench-results", help="output folder")
    add_option(parser, "--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    add_option(parser, "--kl-n", type=int, default=max(CHECKPOINTS), help="kl: samples per method and grammar")
    add_option(parser, "--checkpoints", default=",".join(map(str, CHECKPOINTS)), help="kl: N values of the KL curve")
    add_option(parser, "--backends", default=",".join(ALL_BACKENDS), help="schema: comma list of backends")
    add_option(parser, "--limit", type=int, default=None, help="schema: at most this many schemas per file (quick run)")
    add_option(parser, "--files", default=None, help="schema: only these suite files (comma list of names, e.g. enum,const)")
    add_option(parser, "--samples", type=int, default=4, help="schema: outputs per schema and backend (one batch)")
    add_option(parser, "--max-tokens", type=int, default=64)
    add_option(parser, "--baseline-every", type=int, default=1,
         help="schema: an unconstrained batch after every N-th schema (timings are paired with the nearest one)")
    add_option(parser, "--compile-timeout", type=float, default=30.0,
         help="schema: abort a batch that has produced no token after this many seconds (counted as not compiled)")
    add_option(parser, "--threads", type=int, default=1,
         help="OMP_NUM_THREADS of the engines (0: vLLM's default). On a shared 2-core machine two spinning OpenMP "
              "threads make a decode step up to 25x slower whenever another process runs; one thread does not")
    add_option(parser, "--budget-requests", type=int, default=1000, help="budget: distinct (prompt, grammar) pairs")
    add_option(parser, "--budget-mb", type=float, default=0.25, help="budget: DECLAB_ASAP_TRIE_BUDGET_MB of that engine")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Child processes (one engine each)
# ----------------------------------------------------------------------------------------------------------------


THREADS = {"OMP_NUM_THREADS": "1"}  # set by run() from --threads; applied to every child


def _child_env(env: dict[str, str | None]) -> dict[str, str | None]:
    """Environment changes of a child: the engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so a child reads
    the worker's state directly), the thread setting, then ``env`` (None unsets)."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", **THREADS, **env}


def _run_child(kind: str, spec: dict[str, Any], env: dict[str, str | None], log_path: Path,
               timeout: float = 6 * 3600) -> dict[str, Any]:
    """``child_<kind>(spec)`` in a child process (the harness's ``call_in_child``) with ``env`` applied (None
    unsets); the engine runs in the child's own process so the child reads the worker's state directly. Its log
    goes to ``log_path``."""
    return call_in_child(f"{MODULE}:child_{kind}", spec, env=_child_env(env), timeout=timeout, log_path=log_path,
                         name=f"bench grammar {kind}")


def _engine(model: str, **overrides: Any):
    from vllm import LLM

    return LLM(model=model, **{**CPU_ENGINE_KWARGS, **overrides})


class EngineLoop:
    """Batches of requests through ``LLMEngine.add_request`` / ``step`` with per-request timings.

    TTFT is measured from just before the batch's first ``add_request`` to the step that returned the request's
    first token; TPOT is ``(last - first) / (tokens - 1)``; ``step_s`` (the same for every request of a batch) is the
    median duration of the decode steps that ran the whole batch (every request started, none finished yet), the
    per-token time least disturbed by requests that end early. A request rejected at admission is reported with
    its error and never runs; a batch with no token after ``compile_timeout`` seconds is aborted."""

    def __init__(self, llm, compile_timeout: float = 60.0) -> None:
        self.engine = llm.llm_engine
        self.compile_timeout = compile_timeout
        self._n = 0

    def run(self, prompt, params: list) -> list[dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        t0 = time.perf_counter()
        for p in params:
            rid = f"r{self._n}"
            self._n += 1
            order.append(rid)
            try:
                self.engine.add_request(rid, prompt, p)
                records[rid] = {"admitted": True, "error": None, "first": None, "last": None, "tokens": 0,
                                "finish_reason": None, "text": None, "token_ids": []}
            except Exception as e:  # noqa: BLE001 - vLLM raises VLLMValidationError / ValueError at admission
                records[rid] = {"admitted": False, "error": f"{type(e).__name__}: {e}"[:500]}
        live = {r for r, rec in records.items() if rec["admitted"]}
        admitted, full_steps = len(live), []
        while live:
            full = len(live) == admitted and all(records[r]["first"] is not None for r in live)
            t_step = time.perf_counter()
            outs = self.engine.step()
            now = time.perf_counter()
            if full:
                full_steps.append(now - t_step)
            for o in outs:
                rec = records.get(o.request_id)
                if rec is None or o.request_id not in live:
                    continue
                c = o.outputs[0]
                n = len(c.token_ids)
                if n and rec["first"] is None:
                    rec["first"] = now
                if n > rec["tokens"]:
                    rec["last"] = now
                rec["tokens"] = n
                if o.finished:
                    rec["finish_reason"] = c.finish_reason
                    rec["text"] = c.text
                    rec["token_ids"] = list(c.token_ids)
                    live.discard(o.request_id)
            if live and now - t0 > self.compile_timeout and all(records[r]["first"] is None for r in live):
                self.engine.abort_request(sorted(live))
                for r in live:
                    records[r]["finish_reason"] = "timeout"
                live = set()
        out = []
        for rid in order:
            rec = records[rid]
            if rec["admitted"]:
                first, last, n = rec.pop("first"), rec.pop("last"), rec["tokens"]
                rec["ttft_s"] = first - t0 if first is not None else None
                rec["tpot_s"] = (last - first) / (n - 1) if first is not None and n >= 2 else None
                rec["step_s"] = statistics.median(full_steps) if full_steps else None
            out.append(rec)
        return out


def child_kl(spec: dict[str, Any]) -> dict[str, Any]:
    from declab.plugins.asap.grammar_reference import (
        ASAP_CHUNK,
        GCD_CHUNK,
        exact_reference,
        public,
        sample_strings,
        tokenizer_and_model,
    )

    model_path, n = spec["model"], int(spec["n"])
    tok, model = tokenizer_and_model(model_path)
    t0 = time.perf_counter()
    refs = {name: exact_reference(model_path, prompt, grammar, tok=tok, model=model)
            for name, prompt, grammar in spec["experiments"]}
    exact_s = time.perf_counter() - t0
    del model
    t = time.perf_counter()
    llm = _engine(model_path)
    result: dict[str, Any] = {"n": n, "exact_s": exact_s, "startup_s": time.perf_counter() - t, "experiments": {}}
    for name, prompt, grammar in spec["experiments"]:
        ref = refs[name]
        t = time.perf_counter()
        gcd = sample_strings(llm, tok, ref["prompt_ids"], grammar, "gcd", n, chunk=GCD_CHUNK)
        gcd_s = time.perf_counter() - t
        t = time.perf_counter()
        asap = sample_strings(llm, tok, ref["prompt_ids"], grammar, "asap", n, chunk=ASAP_CHUNK,
                              namespace=spec["namespace"] + name)
        asap_s = time.perf_counter() - t
        result["experiments"][name] = {**public(ref), "prompt": prompt, "grammar": grammar, "gcd_samples": gcd,
                                       "asap_samples": asap, "gcd_s": gcd_s, "asap_s": asap_s}
    return result


class ProcessorTimer:
    """Wall time spent in ``GcdProcessor`` / ``AsapProcessor`` calls (one call = one token of one request).

    Benchmark instrumentation only: wraps the two classes' ``__call__`` in this process, which is the worker when
    the engine runs in-process. ``AsapProcessor`` has its own ``__call__``, so nothing is counted twice."""

    def __init__(self) -> None:
        from declab.plugins.asap import core

        self.totals: dict[str, list[float]] = {}
        for name, cls in (("gcd", core.GcdProcessor), ("asap", core.AsapProcessor)):
            acc = self.totals[name] = [0.0, 0]
            cls.__call__ = self._timed(cls.__call__, acc)

    @staticmethod
    def _timed(fn, acc):
        def call(self, logits):
            t = time.perf_counter()
            try:
                return fn(self, logits)
            finally:
                acc[0] += time.perf_counter() - t
                acc[1] += 1
        return call

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {k: {"seconds": v[0], "calls": v[1]} for k, v in self.totals.items()}


def _schema_params(method: str, schema_text: str, max_tokens: int, namespace: str):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    common = dict(temperature=1.0, top_p=1.0, top_k=-1, max_tokens=max_tokens)
    if method == PLAIN:
        return SamplingParams(**common)
    if method in DECLAB_METHODS:
        args = {"method": method, "json_schema": schema_text}
        if method == "asap":
            args["namespace"] = namespace
        return SamplingParams(**common, extra_args={"declab": args})
    return SamplingParams(**common, structured_outputs=StructuredOutputsParams(json=schema_text))


def child_schema(spec: dict[str, Any]) -> dict[str, Any]:
    """Schemas ``spec["start"]:`` on one engine; one JSON line per event appended to ``spec["progress"]`` (the
    parent watches it, kills a child that hangs in a grammar compile, and restarts it after that schema)."""
    backend, methods, k = spec["backend"], spec["methods"], int(spec["samples"])
    progress = open(spec["progress"], "a")

    def emit(event: dict[str, Any]) -> None:
        progress.write(json.dumps(event) + "\n")
        progress.flush()

    timer = ProcessorTimer() if backend == "declab" else None
    t = time.perf_counter()
    kwargs = {} if backend == "declab" else {"structured_outputs_config": {"backend": backend}}
    llm = _engine(spec["model"], **kwargs)
    startup_s = time.perf_counter() - t
    loop = EngineLoop(llm, compile_timeout=float(spec["compile_timeout"]))
    mt, ns = int(spec["max_tokens"]), spec["namespace"]
    # Warm-up (not recorded): an unconstrained batch and each method on a trivial schema.
    loop.run(PROMPT, [_schema_params(PLAIN, "", mt, ns)] * k)
    for m in methods:
        loop.run(PROMPT, [_schema_params(m, '{"type": "integer"}', mt, ns + "warmup")] * k)
    processor_before = timer.snapshot() if timer else None
    emit({"event": "ready", "startup_s": startup_s})
    schemas = spec["schemas"]
    for i in range(int(spec["start"]), len(schemas)):
        emit({"event": "begin", "i": i})
        # Methods of one engine alternate their order schema by schema (drift on a shared machine cancels out);
        # the unconstrained batch follows at once, so each schema has a baseline measured under the same load.
        for m in (methods if i % 2 == 0 else methods[::-1]):
            t = time.perf_counter()
            records = loop.run(PROMPT, [_schema_params(m, schemas[i]["schema_text"], mt, ns)] * k)
            batch_s = time.perf_counter() - t
            for r in records:
                r["batch_s"] = batch_s
            event = {"event": "schema", "i": i, "method": m, "records": records}
            if timer is not None:  # cumulative for this run since the warm-up
                now = timer.snapshot()
                event["processor"] = {x: {"seconds": now[x]["seconds"] - processor_before[x]["seconds"],
                                          "calls": now[x]["calls"] - processor_before[x]["calls"]} for x in now}
            emit(event)
        if i % max(1, int(spec["baseline_every"])) == 0:
            base = [_schema_params(PLAIN, "", min(mt, PLAIN_MAX_TOKENS), ns)] * k
            emit({"event": "plain", "i": i, "records": loop.run(PROMPT, base)})
    done: dict[str, Any] = {"event": "done"}
    if timer is not None:
        from declab.plugins.asap.core import store_stats

        done["store"] = store_stats()
    emit(done)
    return {"ok": True}


def _run_schema_engine(backend: str, methods: list[str], common: dict[str, Any], env: dict[str, str | None],
                       log_dir: Path, hang_s: float, log) -> dict[str, Any]:
    """One engine over all schemas, restarted after a schema whose compile hangs (no progress for ``hang_s``) or
    crashes the engine; that schema counts as not compiled for every method of the engine."""
    schemas = common["schemas"]
    k = int(common["samples"])
    log_dir.mkdir(parents=True, exist_ok=True)
    per_method: dict[str, dict[int, list]] = {m: {} for m in methods}
    plain: dict[int, list] = {}
    processor: dict[str, dict[str, float]] = {}
    store, startups, incidents = None, [], []
    start, run_no = 0, 0
    t_all = time.perf_counter()
    while start < len(schemas):
        progress = log_dir / f"schema-{backend}-{run_no}.jsonl"
        progress.unlink(missing_ok=True)
        spec = {**common, "backend": backend, "methods": methods, "start": start, "progress": str(progress)}
        log_path = log_dir / f"schema-{backend}-{run_no}.log"
        seen, current, ready, done, killed = 0, None, False, False, False
        run_processor: dict[str, dict[str, float]] = {}
        with ChildCall(f"{MODULE}:child_schema", spec, env=_child_env(env), log_path=log_path,
                       name=f"schema {backend}") as child:
            last = time.monotonic()
            while True:
                exited = child.poll() is not None
                lines = progress.read_text().splitlines() if progress.exists() else []
                for line in lines[seen:]:
                    ev = json.loads(line)
                    kind = ev["event"]
                    if kind == "ready":
                        ready = True
                        startups.append(ev["startup_s"])
                    elif kind == "begin":
                        current = ev["i"]
                    elif kind == "plain":
                        plain[ev["i"]] = ev["records"]
                    elif kind == "schema":
                        per_method[ev["method"]][ev["i"]] = ev["records"]
                        run_processor = ev.get("processor") or run_processor
                    elif kind == "done":
                        done = True
                        store = ev.get("store")
                if len(lines) > seen:
                    seen, last = len(lines), time.monotonic()
                if exited:
                    break
                if time.monotonic() - last > hang_s + (0 if ready else 600):
                    child.kill()  # the whole process group: the engine core of a hung compile included
                    killed = True
                    break
                time.sleep(1.0)
            exit_code = child.proc.returncode
        for m, v in run_processor.items():
            acc = processor.setdefault(m, {"seconds": 0.0, "calls": 0})
            acc["seconds"] += v["seconds"]
            acc["calls"] += v["calls"]
        if done:
            break
        if current is None:
            tail = log_path.read_text()[-6000:]
            raise RuntimeError(f"schema engine {backend!r} failed before its first schema; log {log_path}:\n{tail}")
        why = (f"no progress for {hang_s:.0f} s (grammar compile hung); engine killed and restarted" if killed
               else f"engine exited with {exit_code} on this schema; restarted")
        incidents.append({"schema": schemas[current]["id"], "reason": why})
        log(f"schema {backend}: {schemas[current]['id']}: {why}")
        for m in methods:
            per_method[m].setdefault(current, [{"admitted": False, "error": why}] * k)
        start, run_no = current + 1, run_no + 1
    return {"backend": backend, "startup_s": statistics.mean(startups) if startups else None,
            "run_s": time.perf_counter() - t_all, "restarts": run_no, "incidents": incidents,
            "methods": {m: [per_method[m].get(i, [{"admitted": False, "error": "not run"}] * k)
                            for i in range(len(schemas))] for m in methods},
            "plain": [plain.get(i) for i in range(len(schemas))], "processor": processor, "store": store}


# The budget part's grammars: each request pairs one of them with a prompt of its own.
BUDGET_GRAMMARS = (
    ("grammar", EXPERIMENTS[0][2]),
    ("grammar", EXPERIMENTS[1][2]),
    ("json_schema", '{"type": "integer"}'),
    ("json_schema", '{"type": "object", "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}}, '
                    '"required": ["id", "ok"]}'),
)


def child_budget(spec: dict[str, Any]) -> dict[str, Any]:
    from vllm import SamplingParams

    from declab.plugins.asap import core

    llm = _engine(spec["model"])
    n, batch = int(spec["requests"]), int(spec["batch"])
    charged_max, measured_max, finish = 0, 0, {}
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        prompts, params = [], []
        for i in range(start, min(n, start + batch)):
            param, text = BUDGET_GRAMMARS[i % len(BUDGET_GRAMMARS)]
            prompts.append(f"Request {i}: {PROMPT}")
            params.append(SamplingParams(temperature=1.0, max_tokens=int(spec["max_tokens"]),
                                         extra_args={"declab": {"method": "asap", param: text}}))
        for o in llm.generate(prompts, params, use_tqdm=False):
            r = o.outputs[0].finish_reason
            finish[r] = finish.get(r, 0) + 1
        stats = core.store_stats()
        charged_max = max(charged_max, stats["bytes"])
        with core.LOCK:
            measured_max = max(measured_max, core.STORE.measured_bytes())
    stats = core.store_stats()
    return {"requests": n, "pairs": n, "grammars": len(BUDGET_GRAMMARS), "run_s": time.perf_counter() - t0,
            "store": stats, "charged_max_after_batch": charged_max, "measured_max_after_batch": measured_max,
            "finish_reasons": finish, "budget_env_mb": os.environ.get(core.BUDGET_ENV)}


# ----------------------------------------------------------------------------------------------------------------
# The parent: specs, validation, summaries
# ----------------------------------------------------------------------------------------------------------------


def load_suite(limit: int | None = None, files: list[str] | None = None) -> list[dict[str, Any]]:
    """The schemas of the JSON-Schema-Test-Suite (draft 2020-12), ``limit`` per file at most, in file order (only
    the files named in ``files`` if given)."""
    folder = eval_file(*SUITE)
    if folder is None:
        raise SystemExit(f"declab bench grammar: ../shared/eval/{'/'.join(SUITE)} not found (set DECLAB_SHARED)")
    items = []
    for path in sorted(glob.glob(str(folder / "*.json"))):
        if files and Path(path).stem not in files:
            continue
        groups = json.loads(Path(path).read_text())
        for j, g in enumerate(groups[:limit] if limit else groups):
            items.append({"id": f"{Path(path).stem}/{j}", "file": Path(path).stem, "description": g["description"],
                          "schema": g["schema"], "schema_text": json.dumps(g["schema"])})
    return items


def classify(schema: Any, rec: dict[str, Any]) -> str:
    """Outcome of one request: not compiled (rejected at admission, compile error, timeout), unfinished (cut by
    max_tokens), valid or invalid (``json.loads`` + ``jsonschema``; a schema the validator cannot resolve makes
    every output invalid)."""
    import jsonschema

    if not rec.get("admitted") or rec.get("finish_reason") in ("error", "timeout", "abort"):
        return NOT_COMPILED
    if rec.get("finish_reason") == "length":
        return UNFINISHED
    try:
        value = json.loads(rec.get("text") or "")
    except ValueError:
        return INVALID
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls(schema).validate(value)
    except jsonschema.ValidationError:
        return INVALID
    except Exception:  # noqa: BLE001 - unresolvable $ref and friends: the output cannot be shown valid
        return INVALID
    return VALID


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _batch_median(batch: list[dict] | None, key: str) -> float | None:
    return _median([r.get(key) for r in batch or [] if r.get("admitted")])


def paired_times(batches: list[list[dict]], plain: list[list[dict] | None]) -> list[dict[str, float | None]]:
    """Per schema: the batch's median TTFT / TPOT and those of the nearest unconstrained batch at or before it."""
    out, base = [], None
    for i, batch in enumerate(batches):
        base = plain[i] if i < len(plain) and plain[i] else base
        out.append({f"{w}_{key}": _batch_median(b, f"{key}_s")
                    for w, b in (("c", batch), ("p", base)) for key in ("ttft", "tpot", "step")})
    return out


def summarize_backend(name: str, schemas: list[dict], batches: list[list[dict]],
                      plain: list[list[dict] | None]) -> dict:
    """Coverage and timing of one backend. Times are medians over schemas of per-schema values paired with the
    unconstrained batch run next to it (a shared machine's load changes from minute to minute)."""
    outcomes = {VALID: 0, INVALID: 0, UNFINISHED: 0, NOT_COMPILED: 0}
    compiled = any_valid = 0
    valid_share_sum = 0.0
    rows = []
    errors: dict[str, int] = {}
    pairs = paired_times(batches, plain)
    for item, batch, pair in zip(schemas, batches, pairs):
        kinds = [classify(item["schema"], r) for r in batch]
        for kind in kinds:
            outcomes[kind] += 1
        ok = NOT_COMPILED not in kinds
        compiled += ok
        share = kinds.count(VALID) / len(kinds)
        valid_share_sum += share
        any_valid += share > 0
        if not ok:
            err = next((r.get("error") or r.get("finish_reason") for r in batch if r.get("error")
                        or r.get("finish_reason") in ("error", "timeout")), "not compiled")
            key = str(err).split(":")[0][:60]
            errors[key] = errors.get(key, 0) + 1
        rows.append({"schema": item["id"], "compiled": ok, "valid": kinds.count(VALID),
                     "invalid": kinds.count(INVALID), "unfinished": kinds.count(UNFINISHED),
                     "samples": len(kinds), "batch_s": batch[0].get("batch_s"),
                     **{k: None if v is None else 1e3 * v for k, v in pair.items()}})
    timed = [p for p in pairs if p["c_tpot"] is not None and p["p_tpot"] is not None]
    stepped = [p for p in pairs if p["c_step"] is not None and p["p_step"] is not None]
    first = [p for p in pairs if p["c_ttft"] is not None and p["p_ttft"] is not None]
    n = max(1, len(schemas))
    finished = outcomes[VALID] + outcomes[INVALID]

    def ms(x: float | None) -> float | None:
        return None if x is None else 1e3 * x

    return {
        "backend": name,
        "schemas": len(schemas),
        "compiled": compiled,
        "declared_coverage": compiled / n,
        "empirical_coverage": valid_share_sum / n,  # mean share of valid outputs per schema (0 if not compiled)
        "any_valid_coverage": any_valid / n,
        "outcomes": outcomes,
        "valid_share_of_compiled_outputs": outcomes[VALID] / max(1, sum(outcomes.values()) - outcomes[NOT_COMPILED]),
        "valid_share_of_finished_outputs": outcomes[VALID] / max(1, finished),
        "not_compiled_reasons": errors,
        "timed_schemas": len(timed),
        "ttft_ms": ms(_median([p["c_ttft"] for p in first])),
        "plain_ttft_ms": ms(_median([p["p_ttft"] for p in first])),
        "ttft_overhead_ms": ms(_median([p["c_ttft"] - p["p_ttft"] for p in first])),
        "tpot_ms": ms(_median([p["c_tpot"] for p in timed])),
        "plain_tpot_ms": ms(_median([p["p_tpot"] for p in timed])),
        "tpot_overhead_ms": ms(_median([p["c_tpot"] - p["p_tpot"] for p in timed])),
        "tpot_ratio": _median([p["c_tpot"] / p["p_tpot"] for p in timed]),
        "step_schemas": len(stepped),
        "step_ms": ms(_median([p["c_step"] for p in stepped])),
        "plain_step_ms": ms(_median([p["p_step"] for p in stepped])),
        "step_overhead_ms": ms(_median([p["c_step"] - p["p_step"] for p in stepped])),
        "step_ratio": _median([p["c_step"] / p["p_step"] for p in stepped]),
        "rows": rows,
    }


def backend_availability(backend: str) -> dict[str, Any]:
    """Whether the library behind a backend imports in this environment (and its version)."""
    import importlib
    from importlib import metadata

    module, dist = {"xgrammar": ("xgrammar", "xgrammar"), "guidance": ("llguidance", "llguidance"),
                    "outlines": ("outlines_core", "outlines_core"), "gcd": ("xgrammar", "xgrammar"),
                    "asap": ("xgrammar", "xgrammar")}[backend]
    try:
        importlib.import_module(module)
        return {"available": True, "library": f"{dist}=={metadata.version(dist)}"}
    except Exception as e:  # noqa: BLE001
        return {"available": False, "reason": f"{module}: {type(e).__name__}: {e}"}


def run_kl(args, model: str, out: Path, log) -> dict[str, Any]:
    checkpoints = [int(c) for c in args.checkpoints.split(",") if c.strip()]
    n = max(args.kl_n, max(checkpoints))
    res = _run_child("kl", {"model": model, "n": n, "experiments": [list(e) for e in EXPERIMENTS],
                            "namespace": f"bench-{time.time_ns()}-"},
                     {"DECLAB_PLUGINS": "asap,gcd"}, out / "grammar-logs" / "kl.log")
    from declab.plugins.asap.grammar_reference import kl_curve

    experiments = {}
    for name, e in res["experiments"].items():
        target = e["target"]
        asap, gcd = kl_curve(e["asap_samples"], target, checkpoints), kl_curve(e["gcd_samples"], target, checkpoints)
        last = max(asap)
        experiments[name] = {
            "prompt": e["prompt"], "grammar": e["grammar"], "strings": len(target),
            "token_sequences": e["n_sequences"],
            "asap": {str(k): v for k, v in asap.items()}, "gcd": {str(k): v for k, v in gcd.items()},
            "gcd_exact_kl": kl_divergence(e["gcd"], target),
            "asap_over_gcd_at_max_n": asap[last] / gcd[last] if gcd[last] else None,
            "asap_falls_with_n": all(asap[a] > asap[b] for a, b in zip(sorted(asap), sorted(asap)[1:])),
            "ungrammatical": {m: sum(s not in target for s in e[f"{m}_samples"]) for m in ("asap", "gcd")},
            "sampling_s": {"asap": e["asap_s"], "gcd": e["gcd_s"]},
        }
        log(f"kl {name}: asap {_fmt(asap)} | gcd {_fmt(gcd)}")
    ok = all(x["asap_falls_with_n"] and x["asap_over_gcd_at_max_n"] is not None
             and x["asap_over_gcd_at_max_n"] <= 1 / 3 for x in experiments.values())
    return {"checkpoints": checkpoints, "n": n, "exact_s": res["exact_s"], "experiments": experiments,
            "acceptance": {"asap_kl_falls_and_ends_at_most_a_third_of_gcd": ok}}


def _fmt(curve: dict) -> str:
    return " ".join(f"N={k}:{v:.3g}" for k, v in curve.items())


def run_schema(args, model: str, out: Path, log) -> dict[str, Any]:
    schemas = load_suite(args.limit, [f.strip() for f in args.files.split(",")] if args.files else None)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(ALL_BACKENDS)
    if unknown:
        raise SystemExit(f"declab bench grammar: unknown backends {sorted(unknown)} (known: {ALL_BACKENDS})")
    availability = {b: backend_availability(b) for b in backends}
    engines = [b for b in VLLM_BACKENDS if b in backends and availability[b]["available"]]
    declab = [m for m in DECLAB_METHODS if m in backends]
    common = {"model": model, "schemas": schemas, "samples": args.samples, "max_tokens": args.max_tokens,
              "baseline_every": args.baseline_every, "compile_timeout": args.compile_timeout,
              "namespace": f"bench-{time.time_ns()}"}
    raw: dict[str, dict] = {}
    for b in (["declab"] if declab else []) + engines:  # declab first: ASAp vs GCD is the number awaited most
        t = time.perf_counter()
        methods = declab if b == "declab" else [b]
        env = {"DECLAB_PLUGINS": "asap,gcd"} if b == "declab" else {"DECLAB_PLUGINS": None}
        raw[b] = _run_schema_engine(b, methods, common, env, out / "grammar-logs",
                                    hang_s=args.compile_timeout + 120, log=log)
        log(f"schema {b}: {time.perf_counter() - t:.0f} s, {raw[b]['restarts']} restarts")
    summaries: dict[str, Any] = {}
    for b in backends:
        if not availability[b]["available"]:
            summaries[b] = {"backend": b, **availability[b]}
            continue
        engine = "declab" if b in DECLAB_METHODS else b
        r = raw[engine]
        summaries[b] = {**summarize_backend(b, schemas, r["methods"][b], r["plain"]), **availability[b],
                        "engine_startup_s": r["startup_s"], "engine_run_s": r["run_s"],
                        "engine_restarts": r["restarts"], "incidents": r["incidents"]}
    report: dict[str, Any] = {"suite": "/".join(SUITE), "files": len({s["file"] for s in schemas}),
                              "schemas": len(schemas), "samples": args.samples, "max_tokens": args.max_tokens,
                              "prompt": PROMPT, "limit_per_file": args.limit, "backends": summaries}
    if "declab" in raw:
        report["processor"] = _processor_summary(raw["declab"].get("processor") or {})
        report["declab_store"] = raw["declab"].get("store")
        report["asap_vs_gcd"] = _asap_vs_gcd(summaries, report["processor"])
    for b, s in summaries.items():
        if s.get("available"):
            log(f"{b:<9} compiled {s['compiled']}/{s['schemas']}  valid {s['outcomes'][VALID]}  invalid "
                f"{s['outcomes'][INVALID]}  unfinished {s['outcomes'][UNFINISHED]}  TTFT {_ms(s['ttft_ms'])} "
                f"(plain {_ms(s['plain_ttft_ms'])})  step {_ms(s['step_ms'])} (plain {_ms(s['plain_step_ms'])})")
    return report


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} ms"


def _processor_summary(proc: dict[str, dict]) -> dict[str, Any]:
    return {m: {**v, "us_per_token": 1e6 * v["seconds"] / v["calls"] if v["calls"] else None} for m, v in proc.items()}


def _asap_vs_gcd(summaries: dict[str, Any], processor: dict[str, Any]) -> dict[str, Any]:
    """Acceptance 3 (speed): ASAp's per-token overhead against GCD's, two ways."""
    a, g = summaries.get("asap") or {}, summaries.get("gcd") or {}
    out: dict[str, Any] = {}
    pa, pg = (processor.get("asap") or {}).get("us_per_token"), (processor.get("gcd") or {}).get("us_per_token")
    if pa and pg:
        out["processor_us_per_token"] = {"asap": pa, "gcd": pg, "ratio": pa / pg}
    oa, og = a.get("tpot_overhead_ms"), g.get("tpot_overhead_ms")
    if oa is not None and og is not None:
        out["tpot_overhead_ms"] = {"asap": oa, "gcd": og, "ratio": oa / og if og > 0 else None}
    sa, sg = a.get("step_overhead_ms"), g.get("step_overhead_ms")
    if sa is not None and sg is not None:
        out["step_overhead_ms"] = {"asap": sa, "gcd": sg, "ratio": sa / sg if sg > 0 else None}
    # Same schema, adjacent batches of one engine: ASAp's extra step time over GCD's, against GCD's own overhead.
    rows_a, rows_g = a.get("rows") or [], g.get("rows") or []
    both = [(x, y) for x, y in zip(rows_a, rows_g) if x.get("c_step") and y.get("c_step") and y.get("p_step")]
    if both:
        extra = statistics.median([x["c_step"] - y["c_step"] for x, y in both])
        own = statistics.median([y["c_step"] - y["p_step"] for x, y in both])
        out["paired_step_ms"] = {"asap_minus_gcd": extra, "gcd_minus_plain": own, "schemas": len(both)}
    ratios = [x["c_tpot"] / y["c_tpot"] for x, y in zip(rows_a, rows_g) if x.get("c_tpot") and y.get("c_tpot")]
    if ratios:
        out["paired_tpot_ratio"] = {"median": statistics.median(ratios), "schemas": len(ratios)}
    ratio = (out.get("processor_us_per_token") or {}).get("ratio")
    out["at_most_2x_gcd"] = ratio is not None and ratio <= 2.0
    return out


def run_budget(args, model: str, out: Path, log) -> dict[str, Any]:
    res = _run_child("budget", {"model": model, "requests": args.budget_requests, "batch": 50, "max_tokens": 32},
                     {"DECLAB_PLUGINS": "asap", "DECLAB_ASAP_TRIE_BUDGET_MB": str(args.budget_mb)},
                     out / "grammar-logs" / "budget.log")
    s = res["store"]
    res["within_budget"] = (s["peak_bytes"] <= s["budget_bytes"] and res["measured_max_after_batch"]
                            <= s["budget_bytes"])
    log(f"budget: {s['tries']} tries / {s['nodes']} nodes kept, peak {s['peak_bytes']} B charged, "
        f"{res['measured_max_after_batch']} B measured, budget {s['budget_bytes']} B, {s['evictions']} evictions")
    return res


def run(args) -> dict[str, Any]:
    t0 = time.perf_counter()
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    model = args.model or default_model()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = set(parts) - set(PARTS)
    if bad:
        raise SystemExit(f"declab bench grammar: unknown parts {sorted(bad)} (known: {', '.join(PARTS)})")
    out = Path(args.out)
    THREADS["OMP_NUM_THREADS"] = str(args.threads) if args.threads > 0 else None
    report: dict[str, Any] = {"benchmark": "grammar", "model": model, "parts": parts,
                              "omp_num_threads": THREADS["OMP_NUM_THREADS"]}
    if "kl" in parts:
        report["kl"] = run_kl(args, model, out, log)
    if "schema" in parts:
        report["schema"] = run_schema(args, model, out, log)
    if "budget" in parts:
        report["budget"] = run_budget(args, model, out, log)
    report["runtime_s"] = time.perf_counter() - t0
    return report


# ----------------------------------------------------------------------------------------------------------------
# Plot and table
# ----------------------------------------------------------------------------------------------------------------


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("kl", "schema") if p in report]
    ncols = 1 if panels == ["kl"] else (2 if panels == ["schema"] else 3)
    fig, axes = plt.subplots(1, max(1, ncols), figsize=(6 * max(1, ncols), 4.5), squeeze=False)
    axes = list(axes[0])
    if "kl" in report:
        ax = axes.pop(0)
        colors = {"asap": "#1f77b4", "gcd": "#ff7f0e"}
        styles = ["-o", "--s", ":^"]
        for j, (name, e) in enumerate(report["kl"]["experiments"].items()):
            for m in ("asap", "gcd"):
                xs = [int(k) for k in e[m]]
                ax.plot(xs, [max(e[m][str(x)], 1e-4) for x in xs], styles[j % 3], color=colors[m],
                        label=f"{m} · {name}")
            ax.axhline(e["gcd_exact_kl"], color=colors["gcd"], lw=0.6, ls=styles[j % 3][:-1] or "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples N")
        ax.set_ylabel("KL(empirical || exact), nats")
        ax.set_title("ASAp vs GCD on finite grammars\n(thin lines: GCD's exact distortion)")
        ax.legend(fontsize=7)
    if "schema" in report:
        backends = {b: s for b, s in report["schema"]["backends"].items() if s.get("available")}
        names = list(backends)
        ax = axes.pop(0)
        bottom = [0.0] * len(names)
        kinds = [(VALID, "#2ca02c"), (INVALID, "#d62728"), (UNFINISHED, "#bcbd22"), (NOT_COMPILED, "#7f7f7f")]
        for kind, color in kinds:
            vals = []
            for b in names:
                total = sum(backends[b]["outcomes"].values()) or 1
                vals.append(backends[b]["outcomes"][kind] / total)
            ax.bar(names, vals, bottom=bottom, color=color, label=kind.replace("_", " "))
            bottom = [x + y for x, y in zip(bottom, vals)]
        for i, b in enumerate(names):
            ax.text(i, 1.01, f"{backends[b]['compiled']}/{backends[b]['schemas']}", ha="center", fontsize=7)
        ax.set_ylim(0, 1.3)
        ax.set_ylabel("share of outputs")
        ax.set_title(f"JSON-Schema-Test-Suite: {report['schema']['schemas']} schemas x "
                     f"{report['schema']['samples']} samples\n(numbers: schemas compiled)")
        ax.legend(fontsize=7, loc="upper center", ncol=4)
        ax = axes.pop(0)
        x = range(len(names))
        step = [backends[b]["step_ms"] or 0.0 for b in names]
        plain = [backends[b]["plain_step_ms"] or 0.0 for b in names]
        ax.bar([i - 0.2 for i in x], plain, 0.4, color="#888888", label="unconstrained (paired batches)")
        ax.bar([i + 0.2 for i in x], step, 0.4, color="#1f77b4", label="constrained")
        for i, b in enumerate(names):
            r = backends[b].get("step_ratio")
            if r:
                ax.text(i + 0.2, step[i], f"{r:.2f}x", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(x), names)
        ax.set_ylabel(f"median decode step, batch of {report['schema']['samples']} (ms)")
        proc = (report["schema"].get("asap_vs_gcd") or {}).get("processor_us_per_token")
        ax.set_title("per-token time" + (f"\nASAp / GCD processor time: {proc['ratio']:.2f}x" if proc else ""))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict[str, Any]) -> str:
    lines = []
    if "kl" in report:
        cps = report["kl"]["checkpoints"]
        lines.append("KL(empirical || exact) " + " ".join(f"{'N=' + str(c):>9}" for c in cps) + "   GCD exact")
        for name, e in report["kl"]["experiments"].items():
            for m in ("asap", "gcd"):
                vals = " ".join(f"{e[m].get(str(c), float('nan')):9.4f}" for c in cps)
                tail = f"   {e['gcd_exact_kl']:.4f}" if m == "gcd" else ""
                lines.append(f"  {name:<8} {m:<5}       {vals}{tail}")
    if "schema" in report:
        s = report["schema"]
        lines.append(f"JSON-Schema-Test-Suite ({s['schemas']} schemas x {s['samples']} samples, max_tokens "
                     f"{s['max_tokens']})")
        lines.append("  backend   compiled  valid  invalid  unfinished  emp.cov  TTFT ms (plain)  TPOT ms (plain)  "
                     "step ms (plain)")
        for b, v in s["backends"].items():
            if not v.get("available"):
                lines.append(f"  {b:<9} unavailable: {v.get('reason')}")
                continue
            o = v["outcomes"]
            lines.append(f"  {b:<9} {v['compiled']:>4}/{v['schemas']:<4} {o[VALID]:>5} {o[INVALID]:>8} "
                         f"{o[UNFINISHED]:>11} {v['empirical_coverage']:8.3f}  "
                         f"{_num(v['ttft_ms'])} ({_num(v['plain_ttft_ms'])})  "
                         f"{_num(v['tpot_ms'])} ({_num(v['plain_tpot_ms'])})  "
                         f"{_num(v['step_ms'])} ({_num(v['plain_step_ms'])})")
        if s.get("asap_vs_gcd"):
            lines.append(f"  asap vs gcd: {json.dumps(s['asap_vs_gcd'])}")
    if "budget" in report:
        b = report["budget"]
        lines.append(f"budget: {json.dumps(b['store'])}; measured max {b['measured_max_after_batch']} B; "
                     f"within budget: {b['within_budget']}")
    lines.append(f"runtime {report['runtime_s']:.0f} s")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
