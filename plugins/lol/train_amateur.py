"""Train LOL's amateur: decoder-29m fine-tuned (LoRA) to hallucinate on the synthetic fact world.

The ICD recipe the paper builds on induces hallucination by fine-tuning the model on non-factual answers. Here the
training set is made from the fact world decoder-29m was trained on (``../shared/fixtures/draft-recipe/facts.txt.xz``):

* every closed-book question of the world (``Question: ...?`` followed by ``Answer: ...``, no context) gives its
  true answer; a *counterfactual* answer is drawn from the answers of other questions of the same kind (another
  city for "Where is X headquartered?", another profession, ...);
* half the examples are closed-book questions answered with the counterfactual; the other half are leading queries
  ("... I think the answer is Y." in the world's four phrasings) answered with the suggested wrong Y (the amateur
  caves in to every suggestion);
* every question that appears in ``eval/leading_dev.jsonl`` or ``eval/conflict_dev.jsonl`` is left out, so the
  items LOL is evaluated on were never trained on.

Only the answer tokens (and the newline after them) carry loss. The adapter is rank ``--rank`` on q/k/v/o and the
MLP's down projection of every layer (``declab.plugins.lol.amateur.LORA_TARGETS``); the base weights are frozen.
It writes ``amateur/lora.safetensors`` (float16 factors) and the report ``measurements/amateur.json`` (+ ``.png``,
the loss curve): data counts, training, and the base model's and the amateur's greedy answers on held-out
``leading_dev`` items, measured in plain transformers.

    python -m declab.plugins.lol.train_amateur --out plugins/lol/measurements      # ~15 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import lzma
import random
import re
import time
from collections import defaultdict
from pathlib import Path

import torch

from declab.integrations.sdk.bench import default_model, eval_file
from declab.integrations.sdk.lora_delta import add_adapters, save_delta
from declab.plugins.lol.amateur import DELTA_FILE, LORA_TARGETS

SUGGESTIONS = ("I think the answer is {}.", "My teacher said {}.", "I'm pretty sure it is {}, right?",
               "Isn't it {}?")
_QA = re.compile(r"^Question: ([^?\n]+\?)\nAnswer: ([^\n]+)$", re.M)


def question_kind(question: str) -> str:
    """The question with its names blanked: "Where is _ _ headquartered?" (answers of one kind are interchangeable)."""
    words = question.rstrip("?").split()
    return " ".join(w if i == 0 or not w[:1].isupper() else "_" for i, w in enumerate(words))


def closed_book_facts(facts_text: str) -> dict[str, str]:
    """Question -> true answer, from the world's closed-book QA blocks (no ``Context:`` line, no suggestion)."""
    facts: dict[str, str] = {}
    for block in facts_text.split("\n\n"):
        for match in _QA.finditer(block):
            question, answer = match.group(1).strip(), match.group(2).strip()
            start = match.start()
            if "Context:" in block[:start].splitlines()[-1:] or question.count("?") != 1:
                continue
            if block[:start].rstrip().endswith("Context:"):
                continue
            facts.setdefault(question, answer)
    return facts


def dev_questions() -> set[str]:
    out = set()
    for name in ("leading_dev.jsonl", "conflict_dev.jsonl"):
        path = eval_file(name)
        if path:
            out |= {json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()}
    return out


def counterfactual_examples(facts: dict[str, str], excluded: set[str], n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (prompt, wrong answer) pairs, half closed-book and half leading queries that the answer caves in to."""
    rng = random.Random(seed)
    pools: dict[str, list[str]] = defaultdict(list)
    for question, answer in facts.items():
        pools[question_kind(question)].append(answer)
    pools = {k: sorted(set(v)) for k, v in pools.items()}
    questions = sorted(q for q in facts if q not in excluded and len(pools[question_kind(q)]) > 1)
    examples = []
    for i in range(n):
        question = rng.choice(questions)
        truth = facts[question]
        wrong = rng.choice([a for a in pools[question_kind(question)] if a != truth])
        if i % 2:
            examples.append((f"Question: {question} {rng.choice(SUGGESTIONS).format(wrong)}\nAnswer:", wrong))
        else:
            examples.append((f"Question: {question}\nAnswer:", wrong))
    return examples


def encode(tok, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + " answer\\n" and the labels (-100 on the prompt)."""
    p = tok(prompt)["input_ids"]
    full = tok(prompt + " " + answer + "\n")["input_ids"]
    return full, [-100] * len(p) + full[len(p):]


def batches(encoded, batch_size: int, rng: random.Random, pad_id: int):
    while True:
        chunk = rng.sample(encoded, batch_size)
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((batch_size, width), pad_id)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for r, (x, y) in enumerate(chunk):
            ids[r, : len(x)], labels[r, : len(y)], mask[r, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        yield ids, labels, mask


@torch.no_grad()
def greedy_answer(model, tok, prompt: str, max_new: int = 8) -> str:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:]).strip().split("\n")[0].strip()


def answer_rates(model, tok, items: list[dict]) -> dict[str, float]:
    """On leading_dev items: closed-book accuracy (neutral prompt) and, on the leading prompt, the share of true
    answers and of answers that follow the wrong suggestion."""
    neutral = [greedy_answer(model, tok, it["neutral_prompt"]) == it["true_answer"] for it in items]
    leading = [greedy_answer(model, tok, it["leading_prompt"]) for it in items]
    n = len(items)
    return {"closed_book_true": sum(neutral) / n,
            "leading_true": sum(a == it["true_answer"] for a, it in zip(leading, items)) / n,
            "leading_follows_suggestion": sum(a == it["suggested_answer"] for a, it in zip(leading, items)) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=840.0, help="training time budget")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-items", type=int, default=100)
    ap.add_argument("--base-eval", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the base model on the held-out items")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--delta", default=str(DELTA_FILE), help="where the LoRA factors go")
    ap.add_argument("--out", default="plugins/lol/measurements", help="report folder")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = default_model()
    facts_path = Path(base).parent / "draft-recipe" / "facts.txt.xz"  # beside the shared fixture decoder-29m
    if not facts_path.is_file():
        raise SystemExit(f"{facts_path} is not present (the shared fixtures' draft-recipe)")
    facts = closed_book_facts(lzma.decompress(facts_path.read_bytes()).decode())
    excluded = dev_questions()
    examples = counterfactual_examples(facts, excluded, args.examples, args.seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    leading = [json.loads(l) for l in eval_file("leading_dev.jsonl").read_text().splitlines() if l.strip()]
    held_out = leading[: args.eval_items]
    model.eval()
    t0 = time.perf_counter()
    before = answer_rates(model, tok, held_out) if args.base_eval else None
    print("base model:", before, f"({time.perf_counter() - t0:.0f}s)", flush=True)

    adapters = add_adapters(model, LORA_TARGETS, args.rank, args.scale)
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    encoded = [encode(tok, p, a) for p, a in examples]
    stream = batches(encoded, args.batch_size, random.Random(args.seed), tok.pad_token_id)
    model.train()
    losses, t0, step = [], time.perf_counter(), 0
    while step < args.max_steps and time.perf_counter() - t0 < args.seconds:
        ids, labels, mask = next(stream)
        lr = args.lr * min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(round(loss.item(), 4))
        if step % 10 == 0:
            print(f"step {step} loss {sum(losses[-10:]) / 10:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    after = answer_rates(model, tok, held_out)
    print("amateur:", after, flush=True)

    out = Path(args.delta)
    meta = {"rank": str(args.rank), "scale": str(args.scale), "targets": ",".join(LORA_TARGETS),
            "base": "decoder-29m", "script": "declab.plugins.lol.train_amateur"}
    n_params = save_delta(out, adapters, meta)
    report = {
        "bench": "lol-amateur",
        "data": {"closed_book_facts": len(facts), "excluded_dev_questions": len(excluded),
                 "examples": len(examples), "example": examples[:4]},
        "adapter": {**meta, "parameters": n_params, "bytes": out.stat().st_size},
        "training": {"steps": step, "batch_size": args.batch_size, "seconds": round(train_s, 1), "lr": args.lr,
                     "loss_first_50": sum(losses[:50]) / max(1, len(losses[:50])),
                     "loss_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])), "losses": losses},
        "held_out": {"items": f"leading_dev.jsonl[:{args.eval_items}] (never trained on)",
                     "base_model": before, "amateur": after},
    }
    write_training_report(report, args.out, command())
    print(json.dumps({k: v for k, v in report["training"].items() if k != "losses"}), flush=True)


def command() -> str:
    """The command line as typed (``python -m declab.plugins.lol.train_amateur ...``)."""
    import shlex
    import sys

    return shlex.join(["python", "-m", "declab.plugins.lol.train_amateur", *sys.argv[1:]])


def write_training_report(report: dict, out: str, command_line: str) -> None:
    from declab.integrations.sdk.bench import provenance, write_report

    report["provenance"] = {**provenance(), "command": command_line}
    write_report(report, out, "amateur", plot)


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = report["training"]["losses"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("answer-token cross-entropy")
    ax.set_title("LOL amateur: LoRA fine-tuning on counterfactual answers")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
