"""Train ``draft-5m-long``: the shared draft-5m taught to read long prompts, shipped as a low-rank delta.

Why: draft-5m (``../shared/fixtures/draft-5m``) was distilled on 256-token windows. Along decoder-29m's greedy
continuations of Spec-Bench prompts its top-1 agreement is 0.58 after prompts of up to 128 tokens but 0.12-0.21 after
prompts longer than 384 (``measurements/draft-agreement.json``, per prompt): past the positions it was trained on, its
rotary attention extrapolates and it stops following the target. Summarization and RAG prompts are that long.

How: the same distillation as the recipe (``../shared/fixtures/draft-recipe``: loss 0.3 x next-token cross-entropy
+ 0.7 x KL(decoder-29m || draft) over the full vocabulary), continued from draft-5m on windows of ``--window`` tokens
(default 2,048, the context both models declare), with the base weights frozen and trained:

* a LoRA adapter (rank ``--rank``, scale ``--scale``) on every projection of every layer (q, k, v, o, gate, up, down),
* the RMSNorm weights, whole (9 vectors of 256).

Corpus: the Python standard library's sources and the fact-world documents (``draft-recipe/facts.txt.xz``), as in
the recipe (its installed-package sources are left out: tokenizing them costs minutes and the long windows, not more
code, are what is missing); shuffled documents joined by end-of-text, 2 % held out. No Spec-Bench or eval text.

Continuing (``--init-delta``, the shipped delta) with ``--prose-share`` > 0 draws that share of each batch's windows
from English prose installed with the pinned packages (``prose_documents``: package READMEs and documents, the
language reference), where both models meet text like Spec-Bench's chat prompts, articles and passages, unlike code
and the fact world.

With ``--continuations N`` each step distils on what ``declab bench draft-agreement`` measures instead of on text:
the teacher greedily continues each window's prefix (a length drawn per step from 128 tokens to the window) by N
tokens, and the loss covers those N positions only, with the distribution the teacher chose each token from as the
KL target. Along its own greedy continuations the teacher leaves the text it was trained on (after long prompts
decoder-29m's continuation is often not fluent), which teacher-forced windows never show the draft. The report adds
the agreement along the teacher's continuations of held-out prefixes, before and after.

Output: the delta (``sdk.lora_delta`` format, float16, about 320 KB;
``integrations/default_model/draft-5m-long/delta.safetensors`` by default) and a report (JSON + PNG): training
loss curve, and on held-out windows the draft's cross-entropy and top-1 agreement with decoder-29m's argmax before and
after, split at position 256 (what the base draft was trained on).

    python -m declab.integrations.draft_training --seconds 3600 --threads 2 --out measurements/draft-5m-long
"""

from __future__ import annotations

import argparse
import glob
import lzma
import math
import os
import random
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from declab.integrations.models import BUNDLED_DRAFT_DELTAS, shared_dir, shared_draft_model
from declab.integrations.sdk.bench import default_model, provenance, write_report
from declab.integrations.sdk.lora_delta import add_adapters, load_into_adapters, read_delta, save_delta

NAME = "draft-5m-long"
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
TRAINED_POSITIONS = 256  # the window draft-5m was distilled on
MIN_PREFIX = 128  # the shortest prefix ``--continuations`` continues (Spec-Bench's short prompts are about this long)


def corpus_documents(facts: Path, seed: int) -> list[str]:
    """The standard library's ``.py`` sources (under 200,000 characters each) and the fact-world documents,
    shuffled."""
    docs = []
    stdlib = sysconfig.get_paths()["stdlib"]
    for f in sorted(glob.glob(os.path.join(stdlib, "**/*.py"), recursive=True)):
        if "site-packages" in f:
            continue
        try:
            text = open(f, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) < 200_000:
            docs.append(text)
    docs += lzma.open(facts, "rt", encoding="utf-8").read().split("\n<|endoftext|>\n")
    random.Random(seed).shuffle(docs)
    return docs


def prose_documents(seed: int) -> list[str]:
    """English prose installed with the pinned packages: every package's ``METADATA`` (its README), ``.md`` and
    ``.rst`` files, ``.txt`` files that read as prose (at least 6 words per non-empty line: licenses, notices, not
    vocabularies or requirement lists), 2,000-200,000 characters, each text once; and the standard library's
    ``pydoc_data`` topics (the language reference). Deterministic for a given set of installed versions."""
    import hashlib

    from pydoc_data.topics import topics

    docs, seen = list(topics.values()), set()
    root = sysconfig.get_paths()["purelib"]
    for f in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        name = os.path.basename(f)
        ext = "METADATA" if name == "METADATA" else os.path.splitext(name)[1]
        if ext not in ("METADATA", ".md", ".rst", ".txt") or not os.path.isfile(f):
            continue
        if not 2_000 <= os.path.getsize(f) <= 200_000:
            continue
        try:
            text = open(f, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError):
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        if ext == ".txt" and sum(len(line.split()) for line in lines) < 6 * max(1, len(lines)):
            continue
        digest = hashlib.sha1(text.encode()).digest()
        if digest not in seen:
            seen.add(digest)
            docs.append(text)
    random.Random(seed).shuffle(docs)
    return docs


def token_stream(tokenizer_file: Path, docs: list[str]) -> torch.Tensor:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    eot = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.int32)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor):
    """(loss, cross-entropy, KL): the recipe's 0.3 x CE + 0.7 x KL(teacher || student), per position."""
    vocab = student_logits.size(-1)
    ce = F.cross_entropy(student_logits.reshape(-1, vocab), targets.reshape(-1))
    kl = F.kl_div(F.log_softmax(student_logits, -1).reshape(-1, vocab),
                  F.log_softmax(teacher_logits, -1).reshape(-1, vocab), log_target=True, reduction="batchmean")
    return 0.3 * ce + 0.7 * kl, ce, kl


@torch.no_grad()
def held_out_metrics(student, teacher, windows: list[torch.Tensor]) -> dict[str, Any]:
    """Cross-entropy and top-1 agreement with the teacher's argmax on held-out windows, at positions before and from
    ``TRAINED_POSITIONS``."""
    sums = {"short": [0.0, 0, 0], "long": [0.0, 0, 0]}  # ce sum, agreeing, positions
    for x in windows:
        s = student(input_ids=x[None]).logits[0, :-1].float()
        t = teacher(input_ids=x[None]).logits[0, :-1].float()
        ce = F.cross_entropy(s, x[1:], reduction="none")
        agree = s.argmax(-1) == t.argmax(-1)
        for part, sl in (("short", slice(0, TRAINED_POSITIONS)), ("long", slice(TRAINED_POSITIONS, None))):
            sums[part][0] += ce[sl].sum().item()
            sums[part][1] += int(agree[sl].sum())
            sums[part][2] += ce[sl].numel()
    return {f"positions_{'below' if p == 'short' else 'from'}_{TRAINED_POSITIONS}": {
        "cross_entropy": round(c / max(1, n), 4), "top1_agreement_with_target": round(a / max(1, n), 4),
        "positions": n} for p, (c, a, n) in sums.items()}


@torch.no_grad()
def teacher_continuations(teacher, prefixes: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens ``[B, new_tokens]``, logits ``[B, new_tokens, V]``): the teacher's greedy continuation of each prefix
    (one KV-cached step per token, as ``bench draft-agreement`` generates them) and the distribution it chose each
    token from, which is the distillation target at that position."""
    step = teacher(input_ids=prefixes, use_cache=True, logits_to_keep=1)
    tokens, logits = [], []
    for i in range(new_tokens):
        last = step.logits[:, -1].float()
        logits.append(last)
        tokens.append(last.argmax(-1, keepdim=True))
        if i + 1 < new_tokens:
            step = teacher(input_ids=tokens[-1], past_key_values=step.past_key_values, use_cache=True)
    return torch.cat(tokens, 1), torch.stack(logits, 1)


def continuation_batch(teacher, student, prefixes: torch.Tensor, new_tokens: int):
    """The student's logits at the positions that predict the teacher's greedy continuation of ``prefixes``, with the
    teacher's logits and tokens there: ``(student logits, teacher logits, tokens)``, each ``[B, new_tokens, ...]``."""
    tokens, t_logits = teacher_continuations(teacher, prefixes, new_tokens)
    seq = torch.cat([prefixes, tokens[:, :-1]], 1)
    s_logits = student(input_ids=seq, logits_to_keep=new_tokens).logits
    return s_logits, t_logits, tokens


def held_out_continuation_agreement(student, prefixes: list[torch.Tensor], continuations: list[torch.Tensor]
                                    ) -> dict[str, Any]:
    """Top-1 agreement of the student with the teacher's greedy ``continuations`` of held-out ``prefixes``, scored by
    ``declab bench draft-agreement``'s own ``draft_agreement``: what that bench measures on Spec-Bench, here on text
    that is not an eval set."""
    from declab.integrations.sdk.agreement import draft_agreement

    matches = [m for x, c in zip(prefixes, continuations) for m in draft_agreement(student, x.tolist(), c.tolist())]
    return {"top1_agreement_with_target": round(sum(matches) / max(1, len(matches)), 4), "positions": len(matches)}


def held_out_windows(val: torch.Tensor, window: int, count: int) -> list[torch.Tensor]:
    """``count`` windows spread evenly over the held-out tokens (fewer if they do not fill them)."""
    stride = max(1, (len(val) - window) // max(1, count))
    return [val[i:i + window].long() for i in range(0, len(val) - window, stride)][:count]


def random_windows(train: torch.Tensor, n: int, window: int, gen: torch.Generator) -> torch.Tensor:
    ix = torch.randint(0, len(train) - window - 1, (n,), generator=gen)
    return train[ix[:, None] + torch.arange(window)[None, :]].long()


def prefix_lengths(window: int, new_tokens: int, count: int) -> list[int]:
    """``count`` prefix lengths spread evenly from ``MIN_PREFIX`` tokens to what leaves room for the continuation."""
    top = window - new_tokens
    return [MIN_PREFIX + (top - MIN_PREFIX) * i // max(1, count - 1) for i in range(count)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3600, help="training time budget (the cosine schedule fits it)")
    ap.add_argument("--window", type=int, default=2048, help="tokens per training window")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="the corpus shuffle and held-out split")
    ap.add_argument("--draw-seed", type=int, default=None,
                    help="the training windows drawn (default: --seed); a later stage gives another one to see "
                         "new windows while keeping the same held-out split")
    ap.add_argument("--eval-windows", type=int, default=8, help="held-out windows measured before and after")
    ap.add_argument("--prose-share", type=float, default=0.0,
                    help="share of each batch's windows drawn from the packages' English prose (prose_documents)")
    ap.add_argument("--init-delta", default="",
                    help="continue from this delta (its rank and scale) instead of starting from draft-5m")
    ap.add_argument("--continuations", type=int, default=0,
                    help="train on the teacher's greedy continuations of this many tokens after each window's prefix "
                         f"(a prefix length drawn per step from {MIN_PREFIX} to the window), the loss on those "
                         "positions only")
    ap.add_argument("--delta", default=str(BUNDLED_DRAFT_DELTAS[NAME]), help="where the delta goes")
    ap.add_argument("--out", default=f"measurements/{NAME}", help="report folder")
    args = ap.parse_args(argv)
    if args.draw_seed is None:
        args.draw_seed = args.seed
    if not 0.0 <= args.prose_share <= 1.0:
        raise SystemExit(f"--prose-share must be in [0, 1], got {args.prose_share}")
    if not 0 <= args.continuations <= args.window - MIN_PREFIX:
        raise SystemExit(f"--continuations must be in [0, --window - {MIN_PREFIX}] = [0, {args.window - MIN_PREFIX}], "
                         f"got {args.continuations}")
    from transformers import LlamaForCausalLM

    base, shared = shared_draft_model(), shared_dir()
    if base is None or shared is None:
        raise SystemExit("needs ../shared/fixtures/draft-5m and draft-recipe/facts.txt.xz beside the checkout")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    target_path = default_model()
    tokenizer_file = Path(target_path) / "tokenizer.json"
    sources = {"code_facts": corpus_documents(shared / "fixtures" / "draft-recipe" / "facts.txt.xz", args.seed)}
    if args.prose_share > 0:
        sources["prose"] = prose_documents(args.seed)
    streams = {name: token_stream(tokenizer_file, docs) for name, docs in sources.items()}
    splits = {}  # name -> (held-out tokens, training tokens)
    for name, ids in streams.items():
        n_val = min(200_000, len(ids) // 50)
        splits[name] = (ids[:n_val], ids[n_val:])
    per_batch = {"prose": round(args.batch_size * args.prose_share)} if "prose" in streams else {}
    per_batch["code_facts"] = args.batch_size - per_batch.get("prose", 0)
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    log(f"corpus {', '.join(f'{k} {len(v) / 1e6:.1f}M tokens' for k, v in streams.items())} "
        f"({time.perf_counter() - t0:.0f}s)")
    teacher = LlamaForCausalLM.from_pretrained(target_path, dtype=torch.float32).eval()
    student = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    windows = {name: held_out_windows(val, args.window, args.eval_windows) for name, (val, _) in splits.items()}

    norms = {name + ".weight": m.weight for name, m in student.named_modules() if name.endswith("norm")}
    if args.init_delta:  # the starting point is the delta's model: rank and scale are the delta's
        _, init_meta = read_delta(args.init_delta)
        args.rank, args.scale = int(init_meta["rank"]), float(init_meta["scale"])
    adapters = add_adapters(student, TARGETS, args.rank, args.scale)
    if args.init_delta:
        load_into_adapters(args.init_delta, adapters, norms)
    student.eval()
    before = {name: held_out_metrics(student, teacher, w) for name, w in windows.items()}
    log(f"held out before: {before}")
    # Prefixes of the held-out windows, from short to (nearly) the whole context, and the teacher's continuations of
    # them (generated once: the teacher does not change).
    continuation_prefixes, held_out_continuations, cont_before = {}, {}, {}
    if args.continuations:
        for name, ws in windows.items():
            lengths = prefix_lengths(args.window, args.continuations, len(ws))
            continuation_prefixes[name] = [w[:n] for w, n in zip(ws, lengths)]
            held_out_continuations[name] = [teacher_continuations(teacher, x[None], args.continuations)[0][0]
                                            for x in continuation_prefixes[name]]
            cont_before[name] = held_out_continuation_agreement(student, continuation_prefixes[name],
                                                                held_out_continuations[name])
        log(f"held-out continuations before: {cont_before}")
    for w in norms.values():
        w.requires_grad_(True)
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)] + list(norms.values())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    student.train()
    curve, step, t_train = [], 0, time.perf_counter()
    gen = torch.Generator().manual_seed(args.draw_seed)
    while (elapsed := time.perf_counter() - t_train) < args.seconds:
        # The cosine schedule runs on the time budget, not on a step count: a step's cost varies (with
        # --continuations it grows with the prefix drawn), and a plan made from the first steps' pace left the last
        # third of the third stage at the floor learning rate.
        progress = min(1.0, elapsed / args.seconds)
        lr = args.lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        if args.continuations:
            length = int(torch.randint(MIN_PREFIX, args.window - args.continuations + 1, (1,), generator=gen))
            x = torch.cat([random_windows(splits[name][1], n, length, gen) for name, n in per_batch.items() if n])
            loss, ce, kl = kd_loss(*continuation_batch(teacher, student, x, args.continuations))
        else:
            x = torch.cat([random_windows(splits[name][1], n, args.window, gen) for name, n in per_batch.items() if n])
            with torch.no_grad():
                teacher_logits = teacher(input_ids=x).logits[:, :-1]
            loss, ce, kl = kd_loss(student(input_ids=x).logits[:, :-1], teacher_logits, x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 10 == 0:
            curve.append({"step": step, "seconds": round(time.perf_counter() - t_train, 1), "ce": round(ce.item(), 4),
                          "kl": round(kl.item(), 4), "lr": lr})
            log(f"step {step} {curve[-1]}")
        step += 1
    train_s = time.perf_counter() - t_train
    student.eval()
    after = {name: held_out_metrics(student, teacher, w) for name, w in windows.items()}
    log(f"held out after: {after}")
    cont_after = {name: held_out_continuation_agreement(student, p, held_out_continuations[name])
                  for name, p in continuation_prefixes.items()}
    if cont_after:
        log(f"held-out continuations after: {cont_after}")
    meta = {"rank": args.rank, "scale": args.scale, "targets": ",".join(TARGETS), "base": "draft-5m",
            "whole": "RMSNorm weights", "script": "declab.integrations.draft_training",
            "prose_share": args.prose_share, "continuations": args.continuations,
            "init_delta": _repo_relative(Path(args.init_delta)) if args.init_delta else ""}
    n_params = save_delta(args.delta, adapters, meta, whole=norms)
    report = {
        "bench": "draft-training", "name": NAME, "base": base, "teacher": target_path,
        "corpus": {"tokens": len(streams["code_facts"]), "held_out_tokens": len(splits["code_facts"][0]),
                   "sources": "Python standard library, fact world",
                   **({"prose": {"tokens": len(streams["prose"]), "held_out_tokens": len(splits["prose"][0]),
                                 "documents": len(sources["prose"]), "windows_per_batch": per_batch["prose"],
                                 "sources": "installed packages' METADATA / .md / .rst / prose .txt, pydoc topics"}}
                      if "prose" in streams else {})},
        "delta": {**meta, "parameters": n_params, "bytes": Path(args.delta).stat().st_size,
                  "file": _repo_relative(Path(args.delta))},
        "training": {"steps": step, "window": args.window, "batch_size": args.batch_size, "lr": args.lr,
                     "draw_seed": args.draw_seed,
                     **({"continuations": {"tokens": args.continuations,
                                           "prefix_tokens": [MIN_PREFIX, args.window - args.continuations],
                                           "loss_positions": "the continuation's only"}}
                        if args.continuations else {"tokens_seen": step * args.window * args.batch_size}),
                     "seconds": round(train_s, 1),
                     "threads": args.threads, "loss": "0.3 x CE + 0.7 x KL(teacher || student)", "curve": curve},
        "held_out": {"windows": len(windows["code_facts"]), "window": args.window, "before": before["code_facts"],
                     "after": after["code_facts"]},
        **({"held_out_prose": {"windows": len(windows["prose"]), "window": args.window, "before": before["prose"],
                               "after": after["prose"]}} if "prose" in windows else {}),
        **({"held_out_continuations": {
            "tokens": args.continuations,
            "prefix_tokens": {n: [len(x) for x in p] for n, p in continuation_prefixes.items()},
            "before": cont_before, "after": cont_after}} if cont_after else {}),
        "provenance": provenance(),
    }
    write_report(report, args.out, "training", plot)
    return report


def _repo_relative(path: Path) -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = report["training"]["curve"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([c["step"] for c in curve], [c["kl"] for c in curve], label="KL(teacher || draft)")
    ax.plot([c["step"] for c in curve], [c["ce"] for c in curve], label="cross-entropy")
    ax.set_xlabel(f"step ({report['training']['batch_size']} x {report['training']['window']} tokens)")
    ax.set_title(f"{report['name']}: delta on draft-5m, long windows")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
