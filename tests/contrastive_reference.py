"""Two-pass reference of the contrastive methods (CAD / LQCD / M3ID / CFG) in plain transformers, no vLLM.

For each (main prompt, contrast prompt) pair the model runs both prompts side by side (one batch, left padding, an
attention mask and explicit position ids, KV cache through ``past_key_values``), and every step the method's own
``ContrastiveProcessor.contrast`` (``declab.plugins.<method>.core``) turns the two last-position logits rows into the
contrasted row; the token is drawn from it with ``declab.plugins.shared.contrastive.draw_token`` (greedy = argmax, or the
main request's temperature / top-k / top-p / min-p / seed) and appended to both sequences. Decoding stops at EOS, at
a generated newline (unless ``stop_at_newline`` is off), or after ``max_tokens`` tokens. float32 throughout. An empty
contrast prompt runs the second stream from the main prompt's last token alone (HF transformers' classifier-free
guidance without ``negative_prompt_ids``; CFG's empty ``negative_prompt``).

Prompt token ids are ``tokenizer(prompt)["input_ids"]`` with the tokenizer's default ``add_special_tokens`` (what
vLLM does for a completions prompt); decoder-29m's tokenizer adds no BOS/EOS (checked by the unit tests).

CLI (prints one JSON object)::

    python tests/contrastive_reference.py --method cad --alpha 0.5 --set conflict --limit 400
    python tests/contrastive_reference.py --method lqcd --alpha 0.5 --set leading
    python tests/contrastive_reference.py --method m3id --set conflict          # paper defaults lam 0.02, threshold 0.3
    python tests/contrastive_reference.py --method plain --set leading          # main prompt alone, greedy
    python tests/contrastive_reference.py --method cfg --guidance-scale 1.5 --set conflict  # = cad --alpha 0.5

Sets (``../shared/eval``): ``conflict`` = ``conflict_dev.jsonl`` (main ``prompt_with_context``, contrast
``prompt_without_context``; rates of ``context_answer`` / ``prior_answer``), ``leading`` = ``leading_dev.jsonl``
(main ``leading_prompt``, contrast ``neutral_prompt``; rates of ``suggested_answer`` / ``true_answer``). An answer is
the first non-empty line of the generation, stripped (``declab.integrations.sdk.metrics.first_line_answer``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from declab.integrations.sdk.metrics import answer_rates, first_line_answer
from declab.integrations.models import default_model, eval_file
from declab.integrations.registry import get_spec
from declab.integrations.sdk.params import resolve_params
from declab.integrations.sdk.rows import RowContext
from declab.integrations.sdk.sampling import SamplingSettings, draw_token
from declab.plugins.shared.contrastive import ContrastiveProcessor

SETS: dict[str, dict[str, Any]] = {
    "conflict": {"file": "conflict_dev.jsonl", "main": "prompt_with_context", "contrast": "prompt_without_context",
                 "fields": ("context_answer", "prior_answer")},
    "leading": {"file": "leading_dev.jsonl", "main": "leading_prompt", "contrast": "neutral_prompt",
                "fields": ("suggested_answer", "true_answer")},
}
METHODS = ("plain", "cad", "lqcd", "m3id", "cfg")


@dataclass
class Generation:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""

    @property
    def answer(self) -> str:
        return first_line_answer(self.text)


def load_model(path: str | None = None):
    """decoder-29m (or ``path``) in float32, eval mode, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or default_model()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, tok


def encode(tok, text: str) -> list[int]:
    """Prompt token ids as vLLM's completions endpoint gets them (tokenizer defaults, special tokens included)."""
    return list(tok(text)["input_ids"])


def make_processor(method: str, params: Mapping[str, Any], vocab_size: int,
                   eos_token_id: int | None) -> ContrastiveProcessor:
    """The plugin's own row processor, with ``params`` validated and defaulted by its ``ParamSpec``s."""
    spec = get_spec(method)
    resolved = resolve_params(spec.params, {**{name: "" for name in spec.logits.companions}, **params})
    cls = spec.load_row_processor()
    return cls(resolved, [], [], RowContext(vocab_size=vocab_size, eos_token_id=eos_token_id))


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[r, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids, mask, pos


@torch.no_grad()
def generate_pairs(
    model,
    tok,
    pairs: Sequence[tuple[str, str | None]],
    processor_factory: Callable[[], ContrastiveProcessor] | None,
    *,
    max_tokens: int = 12,
    batch_size: int = 16,
    settings: SamplingSettings | None = None,
    stop_at_newline: bool = True,
) -> list[Generation]:
    """Decode each ``(main_prompt, contrast_prompt)``: contrasted by ``processor_factory()`` (one processor per
    item), or the main prompt alone when ``processor_factory`` is None (plain decoding; contrast ignored)."""
    settings = settings or SamplingSettings(temperature=0.0)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    out: list[Generation] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        b = len(chunk)
        paired = processor_factory is not None
        procs = [processor_factory() for _ in chunk] if paired else []
        seqs = [encode(tok, m) for m, _ in chunk]
        if paired:
            # An empty contrast prompt is HF's classifier-free guidance default: the prompt's last token alone.
            seqs += [encode(tok, c) if c else seqs[i][-1:] for i, (_, c) in enumerate(chunk)]
        ids, mask, pos = _left_pad(seqs, pad)
        gens = [Generation() for _ in chunk]
        done = [False] * b
        past = None
        step_ids, step_pos = ids, pos
        for step in range(max_tokens):
            res = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=past,
                        use_cache=True)
            past = res.past_key_values
            last = res.logits[:, -1, :].float()
            nxt = []
            for i in range(b):
                if done[i]:
                    nxt.append(pad)
                    continue
                row = procs[i].contrast(last[i], last[b + i], step) if paired else last[i]
                token = draw_token(row, settings, step)
                g = gens[i]
                g.token_ids.append(token)
                if eos is not None and token == eos:
                    done[i] = True
                elif stop_at_newline and "\n" in tok.decode(g.token_ids, skip_special_tokens=True):
                    done[i] = True
                nxt.append(token)
            if all(done):
                break
            col = torch.tensor(nxt + (nxt if paired else []), dtype=torch.long).unsqueeze(1)
            step_ids = col
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype)], dim=1)
        for g in gens:
            g.text = tok.decode(g.token_ids, skip_special_tokens=True)
        out.extend(gens)
    return out


def load_set(name: str, limit: int | None = None) -> list[dict]:
    path = eval_file(SETS[name]["file"])
    if path is None:
        raise SystemExit(f"../shared/eval/{SETS[name]['file']} is not present")
    items = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return items[:limit] if limit else items


def score(gens: Sequence[Generation], items: Sequence[Mapping[str, str]], set_name: str) -> dict[str, float]:
    return answer_rates([g.text for g in gens], items, SETS[set_name]["fields"])


def run(method: str, set_name: str, params: Mapping[str, Any], *, limit: int | None = None, max_tokens: int = 12,
        batch_size: int = 16, settings: SamplingSettings | None = None, model=None, tok=None) -> dict[str, Any]:
    if model is None:
        model, tok = load_model()
    items = load_set(set_name, limit)
    cfg = SETS[set_name]
    pairs = [(it[cfg["main"]], it[cfg["contrast"]]) for it in items]
    factory = None
    resolved: dict[str, Any] = {}
    if method != "plain":
        vocab = model.get_output_embeddings().weight.shape[0]
        probe = make_processor(method, params, vocab, tok.eos_token_id)
        companions = get_spec(method).logits.companions
        resolved = {k: v for k, v in probe.params.items() if k not in companions}
        factory = lambda: make_processor(method, params, vocab, tok.eos_token_id)  # noqa: E731
    t0 = time.perf_counter()
    gens = generate_pairs(model, tok, pairs, factory, max_tokens=max_tokens, batch_size=batch_size,
                          settings=settings)
    wall = time.perf_counter() - t0
    rates = score(gens, items, set_name)
    counts = {k: round(v * len(items)) for k, v in rates.items()}
    return {"method": method, "set": set_name, "n": len(items), "params": resolved, "max_tokens": max_tokens,
            "sampling": (settings or SamplingSettings(temperature=0.0)).to_dict(), "rates": rates, "counts": counts,
            "wall_s": round(wall, 2), "answers": [g.answer for g in gens]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--set", choices=tuple(SETS), required=True)
    p.add_argument("--limit", type=int, default=None, help="first N items (default: all)")
    p.add_argument("--alpha", type=float, default=None, help="cad / lqcd contrast strength (default: the spec's)")
    p.add_argument("--beta", type=float, default=None, help="lqcd plausibility constraint (default: off)")
    p.add_argument("--lam", type=float, default=None, help="m3id forgetting rate lambda")
    p.add_argument("--threshold", type=float, default=None, help="m3id confidence threshold (the paper's alpha)")
    p.add_argument("--guidance-scale", type=float, default=None, help="cfg guidance scale g (the set's contrast "
                   "prompt is the negative prompt)")
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--answers", action="store_true", help="include every item's answer in the JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {k: getattr(args, k) for k in ("alpha", "beta", "lam", "threshold", "guidance_scale")
              if getattr(args, k) is not None}
    if args.method != "plain":
        known = {s.name for s in get_spec(args.method).params}
        unknown = sorted(set(params) - known)
        if unknown:
            p.error(f"--{unknown[0]} is not a parameter of {args.method}")
    settings = SamplingSettings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    report = run(args.method, args.set, params, limit=args.limit, max_tokens=args.max_tokens,
                 batch_size=args.batch_size, settings=settings)
    if not args.answers:
        report.pop("answers")
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
