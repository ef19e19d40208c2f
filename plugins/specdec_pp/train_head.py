"""Train SpecDec++'s acceptance-prediction head and report its calibration.

    python -m declab.plugins.specdec_pp.train_head --out plugins/specdec_pp/measurements

Data (none from the evaluation sets in ../shared/eval): prefixes cut from the Python standard library, installed
packages' sources and the fact-world documents the draft recipe distils on (``draft-recipe/facts.txt.xz``), each
prefix from a different document. For each prefix decoder-29m rolls out ``--new-tokens`` greedy tokens; the draft is
teacher-forced along that continuation. At each position the label is 1 when the draft's argmax equals decoder-29m's
greedy token (greedy verification accepts exactly then), the features are the draft's final hidden state and
softmax there. Conditioned on all earlier draft tokens being accepted, the draft's context *is* the target's greedy
path, so these labels are the conditional acceptance events SpecDec++'s stopping rule multiplies.

20% of prefixes (stratified by source) are held out; 10% more pick the head (logistic on the softmax features only,
logistic on hidden + softmax features, 1-hidden-layer MLP) by validation log-loss. The report gives, on the held-out
prefixes, calibration (10-bin reliability diagram, ECE, Brier, AUC, base rate) and the stopping behaviour the head
implies: speculative decoding simulated along the held-out continuations, drafting until the predicted
P(some rejection so far) = 1 - prod(p_accept) exceeds h (at most K = 8), against fixed K = 1..8.
"""

from __future__ import annotations

import argparse
import glob
import lzma
import math
import os
import random
import shlex
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from declab.integrations.sdk.bench import default_draft_model, default_model, load_average, provenance, write_report
from declab.integrations.sdk.draft_model import load_folder_weights, weights_fingerprint
from declab.plugins.specdec_pp.head import AcceptanceHead

HERE = Path(__file__).resolve().parent
DEFAULT_HEAD = HERE / "acceptance_head.safetensors"
PACKAGES = ("transformers", "torch", "numpy", "pydantic", "requests", "jinja2", "click", "rich", "sympy", "networkx")
PREFIX_LENGTHS = (32, 64, 128, 256)
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
MAX_K = 8


def default_facts() -> Path | None:
    """The draft recipe's fact-world corpus (../shared/fixtures/draft-recipe/facts.txt.xz) when present."""
    path = Path(default_model()).parent / "draft-recipe" / "facts.txt.xz"
    return path if path.is_file() else None


# ----------------------------------------------------------------------------------------------------------- data

def source_documents(facts: Path | None) -> dict[str, list[str]]:
    """Training text by source: stdlib files, installed packages' files, fact-world documents (groups of 4)."""
    def read(pattern: str, skip: str | None = None) -> list[str]:
        docs = []
        for f in sorted(glob.glob(pattern, recursive=True)):
            if skip and skip in f:
                continue
            try:
                text = open(f, encoding="utf-8").read()
            except (OSError, UnicodeDecodeError):
                continue
            if 2_000 < len(text) < 150_000:
                docs.append(text)
        return docs

    stdlib = read(os.path.join(sysconfig.get_paths()["stdlib"], "**/*.py"), skip="site-packages")
    site = sysconfig.get_paths()["purelib"]
    packages = [d for pkg in PACKAGES for d in read(os.path.join(site, pkg, "**/*.py"))]
    sources = {"stdlib": stdlib, "packages": packages}
    if facts is not None:
        docs = lzma.open(facts, "rt", encoding="utf-8").read().split("\n<|endoftext|>\n")
        sources["facts"] = ["\n<|endoftext|>\n".join(docs[i:i + 4]) for i in range(0, len(docs) - 3, 4)]
    return sources


def sample_prefixes(sources: dict[str, list[str]], tokenizer, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` prefixes, equal shares per source, each from a different document; prefix lengths cycle through
    PREFIX_LENGTHS in blocks of 16 (one length per rollout batch)."""
    per_source = math.ceil(n / len(sources))
    prefixes = []
    for name, docs in sources.items():
        order = list(range(len(docs)))
        rng.shuffle(order)
        taken = 0
        for i in order:
            if taken == per_source:
                break
            length = PREFIX_LENGTHS[(len(prefixes) // 16) % len(PREFIX_LENGTHS)]
            ids = tokenizer.encode(docs[i]).ids
            if len(ids) < length + 8:
                continue
            start = rng.randrange(0, len(ids) - length)
            prefixes.append({"source": name, "ids": ids[start:start + length]})
            taken += 1
    return prefixes[:n]


@torch.no_grad()
def greedy_rollout(model, prefix: torch.Tensor, n_new: int) -> torch.Tensor:
    """decoder-29m's greedy continuation [B, n_new] of equal-length prefixes [B, P] (KV cache, no EOS stop)."""
    out = model(input_ids=prefix, use_cache=True)
    tokens = [out.logits[:, -1].argmax(-1)]
    for _ in range(n_new - 1):
        out = model(input_ids=tokens[-1][:, None], past_key_values=out.past_key_values, use_cache=True)
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1)


@torch.no_grad()
def draft_along(draft, prefix: torch.Tensor, continuation: torch.Tensor):
    """Teacher-force the draft along prefix + continuation: its final hidden state [B, n, H] and softmax [B, n, V]
    at the positions that predict each continuation token."""
    ids = torch.cat([prefix, continuation], dim=1)
    p, n = prefix.shape[1], continuation.shape[1]
    hidden = draft.model(input_ids=ids).last_hidden_state[:, p - 1:p - 1 + n].float()
    return hidden, torch.softmax(draft.lm_head(hidden).float(), dim=-1)


def build_dataset(prefixes, target, draft, template: AcceptanceHead, n_new: int, eot: int, off_path: bool = False,
                  batch: int = 16):
    """Per prefix: features [n_new, F], labels [n_new], valid [n_new] (positions up to the first end-of-text) and,
    with ``off_path``, the features of the draft's own continuation after each rejected position (``off_path``:
    {position: [m, F]}), which is what the draft sees when a chain runs past its first rejection."""
    rows = []
    by_length = sorted(prefixes, key=lambda g: len(g["ids"]))
    for i in range(0, len(by_length), batch):
        for length in sorted({len(g["ids"]) for g in by_length[i:i + batch]}):
            members = [g for g in by_length[i:i + batch] if len(g["ids"]) == length]
            prefix = torch.tensor([g["ids"] for g in members])
            cont = greedy_rollout(target, prefix, n_new)
            hidden, probs = draft_along(draft, prefix, cont)
            for j, g in enumerate(members):
                drafted = probs[j].argmax(-1)
                label = (drafted == cont[j]).float()
                eos = (cont[j] == eot).nonzero()
                valid = torch.ones(n_new, dtype=torch.bool)
                if len(eos):
                    valid[int(eos[0]) + 1:] = False
                row = {"source": g["source"], "features": template.features(hidden[j], probs[j]), "label": label,
                       "valid": valid}
                if off_path:
                    n_valid = int(valid.sum())
                    path = torch.cat([prefix[j], cont[j]]).tolist()
                    row["off_path"] = {f: draft_own_features(draft, template, path[:length + f] + [int(drafted[f])],
                                                             min(MAX_K - 1, n_valid - 1 - f))
                                       for f in range(n_valid - 1) if not label[f]}
                rows.append(row)
        print(f"  rolled out {min(i + batch, len(prefixes))}/{len(prefixes)} prefixes", flush=True)
    return rows


@torch.no_grad()
def draft_own_features(draft, template: AcceptanceHead, context: list[int], n: int) -> torch.Tensor:
    """Features [n, F] of the draft drafting ``n`` greedy tokens of its own after ``context`` (KV cache)."""
    out = draft.model(input_ids=torch.tensor([context]), use_cache=True)
    feats = []
    for step in range(n):
        hidden = out.last_hidden_state[:, -1].float()
        probs = torch.softmax(draft.lm_head(hidden).float(), dim=-1)
        feats.append(template.features(hidden, probs)[0])
        if step + 1 < n:
            out = draft.model(input_ids=probs.argmax(-1, keepdim=True), past_key_values=out.past_key_values,
                              use_cache=True)
    return torch.stack(feats) if feats else torch.zeros(0, template.n_features)


def split(items, rng: random.Random, held_out: float = 0.2, validation: float = 0.1):
    """Stratified by source: (train, validation, held-out) lists."""
    parts: tuple[list, list, list] = ([], [], [])
    for source in sorted({r["source"] for r in items}):
        members = [r for r in items if r["source"] == source]
        rng.shuffle(members)
        n_held, n_val = round(len(members) * held_out), round(len(members) * validation)
        parts[2].extend(members[:n_held])
        parts[1].extend(members[n_held:n_held + n_val])
        parts[0].extend(members[n_held + n_val:])
    return parts


def stack(rows, use_hidden: bool = True):
    feats = torch.cat([r["features"][r["valid"]] for r in rows])
    labels = torch.cat([r["label"][r["valid"]] for r in rows])
    return (feats if use_hidden else feats[:, -3:]), labels


@torch.no_grad()
def predict(head: AcceptanceHead, features: torch.Tensor) -> list[float]:
    """P(accept) from full (hidden + softmax) raw features, whichever inputs the head uses."""
    return torch.sigmoid(head(features if head.use_hidden else features[:, -3:])).tolist()


def held_out_sequences(head: AcceptanceHead, rows) -> list[HeldOutSequence]:
    return [HeldOutSequence(r["label"][r["valid"]].bool().tolist(), predict(head, r["features"][r["valid"]]),
                            {f: predict(head, feats) for f, feats in r["off_path"].items()}) for r in rows]


# ------------------------------------------------------------------------------------------------------- training

def fit(head: AcceptanceHead, train, val, steps: int = 1500, lr: float = 1e-2, weight_decay: float = 1e-3):
    """Full-batch AdamW on binary cross-entropy; keeps the state with the best validation log-loss."""
    (x, y), (xv, yv) = train, val
    head.set_standardisation(x)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    best, best_state = float("inf"), None
    for step in range(steps):
        head.train()
        opt.zero_grad()
        loss_fn(head(x), y).backward()
        opt.step()
        if step % 25 == 24:
            head.eval()
            with torch.no_grad():
                v = loss_fn(head(xv), yv).item()
            if v < best:
                best, best_state = v, {k: t.clone() for k, t in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head.eval(), best


# -------------------------------------------------------------------------------------------------------- metrics

def auc(p: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged)."""
    values, inverse = torch.unique(p.double(), return_inverse=True)
    order = torch.argsort(p.double(), stable=True)
    ranks = torch.empty_like(p, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(p) + 1, dtype=torch.float64)
    mean_rank = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    mean_rank /= torch.bincount(inverse, minlength=len(values)).double()
    ranks = mean_rank[inverse]
    n_pos = float(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y.bool()].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration(p: torch.Tensor, y: torch.Tensor, bins: int = 10) -> dict[str, Any]:
    """Reliability diagram (equal-width bins), expected calibration error, Brier score, AUC, base rate."""
    which = (p * bins).long().clamp(0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        row = {"bin": [b / bins, (b + 1) / bins], "count": n,
               "mean_predicted": float(p[mask].mean()) if n else None,
               "accepted_share": float(y[mask].mean()) if n else None}
        if n:
            ece += n / len(p) * abs(row["mean_predicted"] - row["accepted_share"])
        table.append(row)
    return {"ece": ece, "brier": float(((p - y) ** 2).mean()), "auc": auc(p, y), "base_rate": float(y.mean()),
            "mean_predicted": float(p.mean()), "positions": len(p),
            "log_loss": float(torch.nn.functional.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), y)),
            "reliability": table}


class HeldOutSequence:
    """One held-out continuation: acceptance labels and the head's P(accept) along the target's greedy path, and
    after each rejected position the head's P(accept) on the draft's own (off-path) continuation."""

    def __init__(self, labels: list[bool], on_path: list[float], off_path: dict[int, list[float]]) -> None:
        self.labels, self.on_path, self.off_path = labels, on_path, off_path

    def chain_probs(self, start: int, max_k: int) -> list[float]:
        """The head's predictions for a chain drafted from ``start``: on the target's path up to and including the
        first rejected token, then on the draft's own tokens."""
        end = min(start + max_k, len(self.labels))
        first_reject = next((i for i in range(start, end) if not self.labels[i]), None)
        if first_reject is None:
            return self.on_path[start:end]
        own = self.off_path.get(first_reject, [])
        return (self.on_path[start:first_reject + 1] + own)[: end - start]


def simulate(sequences: list[HeldOutSequence], policy, max_k: int = MAX_K) -> dict[str, float]:
    """Greedy speculative decoding walked along each held-out continuation. ``policy(chain_probs, max_k)`` gives
    how many tokens to draft; accepted = leading draft tokens whose label is 1; each step is one target forward and
    yields accepted + 1 tokens. A chain that would run past the end of a continuation is cut there (the same for
    every policy)."""
    drafted = accepted = forwards = tokens = 0
    for seq in sequences:
        n, t = len(seq.labels), 0
        while t < n:
            k = min(policy(seq.chain_probs(t, max_k), max_k), n - t)
            acc = 0
            while acc < k and seq.labels[t + acc]:
                acc += 1
            drafted, accepted, forwards, tokens = drafted + k, accepted + acc, forwards + 1, tokens + acc + 1
            t += acc + 1
    return {"drafted_per_step": drafted / forwards, "accepted_per_step": accepted / forwards,
            "tokens_per_target_forward": tokens / forwards, "acceptance_rate": accepted / max(1, drafted),
            "draft_tokens_per_output_token": drafted / tokens, "steps": forwards}


def fixed_policy(k: int):
    return lambda chain_probs, max_k: k


def threshold_policy(h: float):
    """SpecDec++: draft while P(some rejection so far) = 1 - prod p_accept <= h; always at least one token."""
    def policy(chain_probs: list[float], max_k: int) -> int:
        survive = 1.0
        for i, p in enumerate(chain_probs[:max_k]):
            survive *= p
            if 1.0 - survive > h:
                return i + 1
        return max_k
    return policy


def stopping_table(sequences: list[HeldOutSequence]) -> dict[str, Any]:
    fixed = {str(k): simulate(sequences, fixed_policy(k)) for k in range(1, MAX_K + 1)}
    adaptive = {str(h): simulate(sequences, threshold_policy(h)) for h in THRESHOLDS}
    # the oracle as a threshold policy on perfect predictions: P(accept) = the label itself
    perfect = [HeldOutSequence(s.labels, [float(a) for a in s.labels],
                               {f: [0.0] * len(v) for f, v in s.off_path.items()})
               for s in sequences]
    oracle = simulate(perfect, threshold_policy(0.5))
    return {"max_k": MAX_K, "fixed_k": fixed, "threshold": adaptive, "oracle_stop_at_first_rejection": oracle,
            "note": "Simulated along held-out decoder-29m greedy continuations: accepted counts are exact (greedy "
                    "verification), the head's predictions after a chain's first rejection are taken on the draft's "
                    "own continuation. Chains are cut at the end of each 64-token continuation, for every policy."}


# ----------------------------------------------------------------------------------------------------------- report

def plot(report: dict[str, Any], path: Path) -> None:
    """Reliability diagram, predicted-probability histogram, tokens per target forward vs drafted tokens per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--")
    for name, style in ((report["chosen_head"], "o-"), ("draft max prob (no head)", "s:")):
        rows = [r for r in report["heads"][name]["held_out"]["reliability"] if r["count"]]
        ax.plot([r["mean_predicted"] for r in rows], [r["accepted_share"] for r in rows], style,
                label=f"{name}: ECE {report['heads'][name]['held_out']['ece']:.3f}")
    ax.set_xlabel("predicted P(accept)")
    ax.set_ylabel("accepted share (held-out)")
    ax.set_title("reliability, 10 bins")
    ax.legend(fontsize=8)
    ax = axes[1]
    rows = report["heads"][report["chosen_head"]]["held_out"]["reliability"]
    ax.bar([r["bin"][0] + 0.05 for r in rows], [r["count"] for r in rows], width=0.09, color="#1f77b4")
    ax.set_xlabel("predicted P(accept)")
    ax.set_ylabel("held-out positions")
    ax.set_title(f"{report['chosen_head']}: predictions per bin")
    ax = axes[2]
    stop = report["stopping"]
    fixed = [stop["fixed_k"][str(k)] for k in range(1, stop["max_k"] + 1)]
    ax.plot([f["drafted_per_step"] for f in fixed], [f["tokens_per_target_forward"] for f in fixed], "o-",
            color="#888888", label="fixed K = 1..8")
    for k, f in enumerate(fixed, 1):
        ax.annotate(f"K={k}", (f["drafted_per_step"], f["tokens_per_target_forward"]), fontsize=7)
    ada = [(h, stop["threshold"][h]) for h in stop["threshold"]]
    ax.plot([a["drafted_per_step"] for _, a in ada], [a["tokens_per_target_forward"] for _, a in ada], "D-",
            color="#d62728", label="SpecDec++ threshold h")
    for h, a in ada:
        ax.annotate(f"h={h}", (a["drafted_per_step"], a["tokens_per_target_forward"]), fontsize=7, color="#d62728")
    o = stop["oracle_stop_at_first_rejection"]
    ax.plot([o["drafted_per_step"]], [o["tokens_per_target_forward"]], "*", ms=12, color="#2ca02c",
            label="oracle: stop at the first rejection")
    ax.set_xlabel("drafted tokens per step (draft compute)")
    ax.set_ylabel("tokens per target forward")
    ax.set_title("simulated along held-out greedy continuations")
    ax.legend(fontsize=8)
    fig.suptitle("SpecDec++ acceptance head (draft-5m -> decoder-29m), held-out prefixes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command() -> str:
    return shlex.join(["python", "-m", "declab.plugins.specdec_pp.train_head", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for head-calibration.json / .png")
    ap.add_argument("--head", default=str(DEFAULT_HEAD), help="where the chosen head's safetensors file goes")
    ap.add_argument("--target", default=default_model(), help="target model folder (decoder-29m)")
    ap.add_argument("--draft", default=default_draft_model(), help="draft model folder (draft-5m)")
    ap.add_argument("--facts", default=default_facts(), help="fact-world corpus (facts.txt.xz)")
    ap.add_argument("--prefixes", type=int, default=600)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--mlp-hidden", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.prefixes < 20:
        raise ValueError("prefixes: need at least 20 (20% are held out)")
    if not 0 < args.mlp_hidden <= 64:
        raise ValueError("mlp-hidden: between 1 and 64 units")

    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    load_at_start, t0 = load_average(), time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer = Tokenizer.from_file(os.path.join(args.target, "tokenizer.json"))
    eot = tokenizer.token_to_id("<|endoftext|>")
    sources = source_documents(Path(args.facts) if args.facts else None)
    prefixes = sample_prefixes(sources, tokenizer, args.prefixes, rng)
    target = LlamaForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    draft = LlamaForCausalLM.from_pretrained(args.draft, dtype=torch.float32).eval()
    template = AcceptanceHead(draft.config.hidden_size)
    print(f"{len(prefixes)} prefixes from {sorted(sources)}; rolling out {args.new_tokens} tokens each", flush=True)
    train_prefixes, val_prefixes, held_prefixes = split(prefixes, rng)
    train = build_dataset(train_prefixes, target, draft, template, args.new_tokens, eot)
    val = build_dataset(val_prefixes, target, draft, template, args.new_tokens, eot)
    held = build_dataset(held_prefixes, target, draft, template, args.new_tokens, eot, off_path=True)
    rows = train + val + held
    t_data = time.time() - t0

    candidates = {
        "logistic, softmax features": (AcceptanceHead(template.hidden_size, 0, use_hidden=False), False, 1e-2),
        "logistic, hidden + softmax features": (AcceptanceHead(template.hidden_size, 0), True, 1e-2),
        f"MLP {args.mlp_hidden}, hidden + softmax features": (AcceptanceHead(template.hidden_size, args.mlp_hidden),
                                                              True, 3e-3),
    }
    heads: dict[str, Any] = {}
    held_feats, held_y = stack(held)
    for name, (head, use_hidden, lr) in candidates.items():
        head, val_loss = fit(head, stack(train, use_hidden), stack(val, use_hidden), lr=lr)
        p = torch.sigmoid(head(held_feats if use_hidden else held_feats[:, -3:])).detach()
        heads[name] = {"validation_log_loss": val_loss, "held_out": calibration(p, held_y), "module": head}
        print(f"  {name}: val log-loss {val_loss:.4f}, held-out ECE {heads[name]['held_out']['ece']:.4f} "
              f"AUC {heads[name]['held_out']['auc']:.4f}", flush=True)
    chosen = min(heads, key=lambda n: heads[n]["validation_log_loss"])
    heads["draft max prob (no head)"] = {"held_out": calibration(held_feats[:, -3].clamp(0, 1), held_y)}
    best = heads[chosen].pop("module")
    best.draft = {"name": Path(args.draft).name, "fingerprint": weights_fingerprint(load_folder_weights(args.draft))}
    for h in heads.values():
        h.pop("module", None)
    best.save(args.head)

    sequences = held_out_sequences(best, held)
    report = {
        "benchmark": "head-calibration",
        "paper": "SpecDec++ (reading list 47)",
        "target": Path(args.target).name, "draft": Path(args.draft).name, "draft_fingerprint": best.draft["fingerprint"],
        "data": {"prefixes": len(rows), "new_tokens_per_prefix": args.new_tokens,
                 "prefix_lengths": list(PREFIX_LENGTHS),
                 "prefixes_by_source": {s: sum(r["source"] == s for r in rows) for s in sorted(sources)},
                 "split_prefixes": {"train": len(train), "validation": len(val), "held_out": len(held)},
                 "train_positions": int(sum(r["valid"].sum() for r in train)),
                 "held_out_positions": len(held_y),
                 "label": "draft argmax == decoder-29m greedy token, draft teacher-forced along the greedy rollout"},
        "chosen_head": chosen,
        "head_file": os.path.relpath(args.head),
        "head_bytes": os.path.getsize(args.head),
        "held_out": {k: v for k, v in heads[chosen]["held_out"].items() if k != "reliability"},
        "heads": heads,
        "stopping": stopping_table(sequences),
        "seconds": {"data": round(t_data, 1), "total": round(time.time() - t0, 1)},
        "threads": args.threads,
    }
    prov = provenance(load_at_start)
    prov["command"] = command()
    report["provenance"] = prov
    write_report(report, args.out, "head-calibration", plot)
    print(summary(report))
    return report


def summary(report: dict[str, Any]) -> str:
    h = report["held_out"]
    lines = [f"chosen {report['chosen_head']}: ECE {h['ece']:.4f} Brier {h['brier']:.4f} AUC {h['auc']:.4f} "
             f"base rate {h['base_rate']:.4f} ({h['positions']} held-out positions)",
             f"{'policy':<12}{'drafted/step':>14}{'accepted/step':>15}{'tokens/fwd':>12}"]
    stop = report["stopping"]
    rows = [(f"K={k}", v) for k, v in stop["fixed_k"].items()] + [(f"h={k}", v) for k, v in stop["threshold"].items()]
    rows.append(("oracle", stop["oracle_stop_at_first_rejection"]))
    for name, v in rows:
        lines.append(f"{name:<12}{v['drafted_per_step']:>14.3f}{v['accepted_per_step']:>15.3f}"
                     f"{v['tokens_per_target_forward']:>12.3f}")
    lines.append(f"total {report['seconds']['total']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
