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
from declab.integrations.sdk.lora_delta import add_adapters, save_delta

NAME = "draft-5m-long"
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
TRAINED_POSITIONS = 256  # the window draft-5m was distilled on


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3600, help="training time budget (the cosine schedule fits it)")
    ap.add_argument("--window", type=int, default=2048, help="tokens per training window")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-windows", type=int, default=8, help="held-out windows measured before and after")
    ap.add_argument("--delta", default=str(BUNDLED_DRAFT_DELTAS[NAME]), help="where the delta goes")
    ap.add_argument("--out", default=f"measurements/{NAME}", help="report folder")
    args = ap.parse_args(argv)
    from transformers import LlamaForCausalLM

    base, shared = shared_draft_model(), shared_dir()
    if base is None or shared is None:
        raise SystemExit("needs ../shared/fixtures/draft-5m and draft-recipe/facts.txt.xz beside the checkout")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    target_path = default_model()
    ids = token_stream(Path(target_path) / "tokenizer.json",
                       corpus_documents(shared / "fixtures" / "draft-recipe" / "facts.txt.xz", args.seed))
    n_val = min(200_000, len(ids) // 50)
    val, train = ids[:n_val], ids[n_val:]
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    log(f"corpus {len(ids) / 1e6:.1f}M tokens ({time.perf_counter() - t0:.0f}s)")
    teacher = LlamaForCausalLM.from_pretrained(target_path, dtype=torch.float32).eval()
    student = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    step_stride = max(1, (len(val) - args.window) // max(1, args.eval_windows))
    windows = [val[i:i + args.window].long() for i in range(0, len(val) - args.window, step_stride)][:args.eval_windows]
    student.eval()
    before = held_out_metrics(student, teacher, windows)
    log(f"held out before: {before}")

    adapters = add_adapters(student, TARGETS, args.rank, args.scale)
    norms = {name + ".weight": m.weight for name, m in student.named_modules() if name.endswith("norm")}
    for w in norms.values():
        w.requires_grad_(True)
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)] + list(norms.values())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    student.train()
    curve, step, t_train, planned = [], 0, time.perf_counter(), None
    gen = torch.Generator().manual_seed(args.seed)
    while time.perf_counter() - t_train < args.seconds:
        if step == 10:  # the cosine schedule spans the budget at the first 10 steps' pace
            planned = int(args.seconds / ((time.perf_counter() - t_train) / 10))
        progress = min(1.0, step / (planned or 10**9))
        lr = args.lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        ix = torch.randint(0, len(train) - args.window - 1, (args.batch_size,), generator=gen)
        x = train[ix[:, None] + torch.arange(args.window)[None, :]].long()
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
    after = held_out_metrics(student, teacher, windows)
    log(f"held out after: {after}")
    meta = {"rank": args.rank, "scale": args.scale, "targets": ",".join(TARGETS), "base": "draft-5m",
            "whole": "RMSNorm weights", "script": "declab.integrations.draft_training"}
    n_params = save_delta(args.delta, adapters, meta, whole=norms)
    report = {
        "bench": "draft-training", "name": NAME, "base": base, "teacher": target_path,
        "corpus": {"tokens": len(ids), "held_out_tokens": n_val, "sources": "Python standard library, fact world"},
        "delta": {**meta, "parameters": n_params, "bytes": Path(args.delta).stat().st_size,
                  "file": _repo_relative(Path(args.delta))},
        "training": {"steps": step, "window": args.window, "batch_size": args.batch_size, "lr": args.lr,
                     "tokens_seen": step * args.window * args.batch_size, "seconds": round(train_s, 1),
                     "threads": args.threads, "loss": "0.3 x CE + 0.7 x KL(teacher || student)", "curve": curve},
        "held_out": {"windows": len(windows), "window": args.window, "before": before, "after": after},
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
