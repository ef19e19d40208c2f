"""Every engine and server configuration the test suite runs, in the order the session starts them.

A test uses a profile by naming its fixture: ``<name>_engine`` (an ``engines.EngineHandle``) or ``<name>_server``
(the base URL). ``conftest.py`` makes the fixtures, marks the tests ``engine`` / ``server`` and orders them by
profile, this table's order, so each engine starts once per session. A new plugin's engine tests add a profile
here only when no existing one has the environment and engine kwargs they need.
"""

from __future__ import annotations

import json

from engines import EngineProfile, Reference, ServerProfile, greedy_run, sample_run, seeded_sample_run

from declab.integrations import registry
from declab.integrations.prompts import CODE_PROMPTS, default_bench_prompts, spec_bench_prompts
from declab.plugins.token_recycling.spec import PROPOSER_PATH


def token_recycling(k: int) -> dict:
    """A speculative_config with Token Recycling as the proposer, drafting ``k`` tokens (a chain, or a tree's nodes)."""
    return {"method": "custom_class", "model": PROPOSER_PATH, "num_speculative_tokens": k}


def contrastive_search(k: int) -> dict:
    """A speculative_config with contrastive search's proposer, room for ``k`` candidates per step."""
    spec = registry.get_spec("contrastive_search")
    return {"method": "custom_class", "model": spec.proposer.proposer, "num_speculative_tokens": k}


def draft_proposer(plugin: str, k: int, **settings) -> dict:
    """Engine kwargs running ``plugin``'s draft-model proposer (its class path from its spec), ``k`` tokens at most."""
    spec = registry.get_spec(plugin)
    return {"speculative_config": {"method": "custom_class", "model": spec.proposer.proposer,
                                   "num_speculative_tokens": k},
            "additional_config": {"declab": {plugin: settings}}, "disable_log_stats": False}


def attention(plugin: str, **settings) -> dict:
    """Engine kwargs of an attention-backend plugin with these settings (defaults for the others)."""
    return {"additional_config": {"declab": {plugin: settings}}} if settings else {}


def tensor_parallel(profile: EngineProfile, size: int = 2) -> EngineProfile:
    """``profile`` on ``size`` tensor-parallel workers (vLLM's multiprocessing executor; the engine core stays in the
    host), named ``<name>_tp<size>``. Each CPU worker is bound to one core of its own (``VLLM_CPU_OMP_THREADS_BIND``):
    without it vLLM refuses to start a second worker on a 2-core machine."""
    return EngineProfile(f"{profile.name}_tp{size}", profile.plugins,
                         env={**profile.env, "VLLM_CPU_OMP_THREADS_BIND": "|".join(map(str, range(size)))},
                         engine_kwargs={**profile.engine_kwargs, "tensor_parallel_size": size})


SEEDED_CHUNKED_BUDGET = 128  # tokens per step of the seeded_chunked engine
TR_TREE = '{"mode": "tree"}'  # DECLAB_TOKEN_RECYCLING: the paper's 80-node tree, verified inside the engine

# Every discovered logits-level plugin (a new plugin joins without editing this file).
ALL_LOGITS_PLUGINS = ",".join(n for n, s in registry.all_specs().items() if s.hook == registry.HOOK_LOGITS)

# Scale-out (tests/test_scale_out.py): every logits-level plugin on one engine (extractive's exact mode needs all
# log-probs), on one worker and on two tensor-parallel workers; Token Recycling chain and tree on two workers.
ALL_LOGITS = EngineProfile("all_logits", plugins=ALL_LOGITS_PLUGINS,
                           engine_kwargs={"max_logprobs": -1, "block_size": 32})
TR_CHAIN = EngineProfile("tr_chain", plugins="token_recycling",
                         engine_kwargs={"speculative_config": token_recycling(6), "disable_log_stats": False})
TR_TREE_PROFILE = EngineProfile("tr_tree", plugins="token_recycling",
                                env={"DECLAB_TOKEN_RECYCLING": TR_TREE,
                                     "DECLAB_TOKEN_RECYCLING_STATS": "{workdir}/tr_tree.json"},
                                engine_kwargs={"speculative_config": token_recycling(80), "disable_log_stats": False})

PROFILES: tuple[EngineProfile, ...] = (
    # vLLM with plugin loading off: the reference every lossless check compares against (VanillaGreedy).
    EngineProfile("vanilla", env={"VLLM_PLUGINS": ""}),
    # declab installed, nothing selected; also the engine of search loops that need no plugin (diverse beam).
    EngineProfile("installed"),
    EngineProfile("router", plugins="momentum,extractive"),
    # exact mode scores up to the whole vocabulary (declab.plugins.extractive.search.ENGINE_KWARGS); block_size 32
    # lets prefix caching reuse these short prompts between the search's requests.
    EngineProfile("extractive", plugins="extractive", engine_kwargs={"max_logprobs": -1, "block_size": 32}),
    EngineProfile("asap", plugins="asap,gcd"),
    TR_CHAIN,
    TR_TREE_PROFILE,
    EngineProfile("contrastive", plugins="cad,lqcd,m3id,cfg", engine_kwargs={"block_size": 32}),
    # Chunked prefill with a small token budget, so a prompt is split when others are scheduled before it; any
    # plugin selected applies the seeded-chunked-prefill patch; no prefix caching (a cached prefix skips prefill).
    EngineProfile("seeded_chunked", plugins="momentum",
                  engine_kwargs={"max_model_len": 512, "max_num_seqs": 4, "enable_chunked_prefill": True,
                                 "max_num_batched_tokens": SEEDED_CHUNKED_BUDGET, "enable_prefix_caching": False}),
    # 20 blocks of 32 tokens for dozens of pairs: the scheduler must preempt.
    EngineProfile("contrastive_preempt", plugins="cad,lqcd",
                  engine_kwargs={"block_size": 32, "num_gpu_blocks_override": 20, "max_model_len": 256,
                                 "max_num_seqs": 64}),
    # Draft-model proposers (tests/test_draft_proposers.py), each with ../shared/fixtures/draft-5m but PEARL, which
    # names draft-5m-long (the shared draft + the delta the package ships, merged on first use), so that a named
    # draft runs through the setting. RAPID's draft context is cut to 64 tokens so that the reduced Spec-Bench
    # prompts are shortened, read at their prompt positions (keep_positions: the anchored draft cache; the packed
    # positions of the default are every other draft proposer's).
    EngineProfile("pearl", plugins="pearl",
                  engine_kwargs=draft_proposer("pearl", 8, window=4, draft_model="draft-5m-long")),
    EngineProfile("specdec_pp", plugins="specdec_pp", engine_kwargs=draft_proposer("specdec_pp", 8)),
    EngineProfile("rapid", plugins="rapid", engine_kwargs=draft_proposer("rapid", 4, context_tokens=64, keep_positions=True)),
    # Draft-tree proposers (tests/test_draft_proposers.py): 24-node trees of the same draft, verified by the tree seam.
    EngineProfile("rsd", plugins="rsd", engine_kwargs=draft_proposer("rsd", 24, beam_width=4, beam_depth=6)),
    EngineProfile("spectr", plugins="spectr", engine_kwargs=draft_proposer("spectr", 24, drafts=4, length=6)),
    EngineProfile("dyspec", plugins="dyspec", engine_kwargs=draft_proposer("dyspec", 24, per_round=6)),
    # EAD (tests/test_ead_engine.py): lossy, every draft kept (patch ead_accepts_drafts); thresholds per request.
    EngineProfile("ead", plugins="ead", engine_kwargs=draft_proposer("ead", 8, threshold=1.5, window=4)),
    # Attention backends (tests/test_attention_engine.py): GEAR at full rank and TidalDecode with a budget above every
    # context are vanilla; GEAR at its defaults on a cache small enough to preempt, with prefix caching.
    EngineProfile("gear_exact", plugins="gear", engine_kwargs=attention("gear", rank=64)),
    EngineProfile("tidal_full", plugins="tidaldecode", engine_kwargs=attention("tidaldecode", budget=2048)),
    EngineProfile("gear_preempt", plugins="gear",
                  engine_kwargs={**attention("gear"), "block_size": 32, "num_gpu_blocks_override": 24,
                                 "max_model_len": 640, "max_num_seqs": 16, "enable_prefix_caching": True}),
    # TidalDecode below the context (budget 64) on the same small cache: sparse decode rows read packed-free pages
    # that preemption, prefix caching and aborts recycle.
    EngineProfile("tidal_preempt", plugins="tidaldecode",
                  engine_kwargs={**attention("tidaldecode", budget=64), "block_size": 32, "num_gpu_blocks_override": 24,
                                 "max_model_len": 640, "max_num_seqs": 16, "enable_prefix_caching": True}),
    # Contrastive search (tests/test_contrastive_search_engine.py): its proposer, up to 8 candidates per step.
    EngineProfile("contrastive_search", plugins="contrastive_search",
                  engine_kwargs={"speculative_config": contrastive_search(8)}),
    # Training-free self-speculation of issue 16 (tests/test_self_spec_engine.py): the hybrid drafter and ADED
    # (chain; the search tree on the tree seam) and SJD, each on the default model.
    EngineProfile("hybrid", plugins="hybrid_drafter", engine_kwargs=draft_proposer("hybrid_drafter", 8,
                                                                                   hindsight=True)),
    EngineProfile("aded", plugins="aded", engine_kwargs=draft_proposer("aded", 8)),
    EngineProfile("aded_tree", plugins="aded", engine_kwargs=draft_proposer("aded", 24, mode="tree")),
    EngineProfile("sjd", plugins="sjd", engine_kwargs=draft_proposer("sjd", 4)),
    # SWIFT (tests/test_swift_engine.py): its defaults, a search short enough to finish inside the tests.
    EngineProfile("swift", plugins="swift", engine_kwargs=draft_proposer("swift", 8, search_patience=20,
                                                                         max_search_iters=60)),
    ALL_LOGITS,
    tensor_parallel(ALL_LOGITS),
    tensor_parallel(TR_CHAIN),
    tensor_parallel(TR_TREE_PROFILE),
)

SERVERS: tuple[ServerProfile, ...] = (
    ServerProfile("momentum", "momentum"),
    ServerProfile("contrastive", "cad,lqcd,cfg"),
    # Two engine cores (one core each) with the plugins and settings of ALL_LOGITS (tests/test_scale_out.py).
    ServerProfile("dp2", ALL_LOGITS.plugins, args=("--data-parallel-size", "2", "--block-size", "32",
                                                   "--max-logprobs", "-1"),
                  env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}),
    # Every discovered logits plugin on one server: the fuzz suite (tests/test_fuzz.py) and the admission
    # regressions of issue #13 (tests/test_admission_regressions.py).
    ServerProfile("all_logits", ALL_LOGITS_PLUGINS),
    ServerProfile("contrastive_search", "contrastive_search",
                  args=("--speculative-config", json.dumps(contrastive_search(8)))),
)


def spec_bench_reduced() -> list[str]:
    """Two first turns per Spec-Bench category (when ../shared is present) plus code prompts."""
    per_cat: dict[str, list[str]] = {}
    for cat, text in spec_bench_prompts(max_chars=3000):
        if len(per_cat.setdefault(cat, [])) < 2:
            per_cat[cat].append(text)
    return [p for ps in per_cat.values() for p in ps] + list(CODE_PROMPTS[:8])


def long_code_prompts() -> list[str]:
    """Four code contexts of ~250-450 tokens (declab's own sources: the model has not seen them)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    texts = [(root / "integrations" / "sdk" / "trees.py").read_text(),
             (root / "integrations" / "catalog.py").read_text()]
    return [texts[0][:1000], texts[0][2000:3500], texts[1][:1400], texts[1][1500:2200]]


# A prompt whose continuation loops, so recycled drafts are often right and the verifier is exercised.
STACK_PROMPT = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"

# Vanilla outputs several tests compare against, computed once per session (the ``vanilla`` fixture); a test module
# declares the ones it reads with ``@pytest.mark.vanilla(name, ...)`` so that they are computed together.
VANILLA_REFERENCES: dict[str, Reference] = {
    "bench12": Reference(greedy_run, lambda: (default_bench_prompts(12), 48)),
    "spec_bench_reduced": Reference(greedy_run, lambda: (spec_bench_reduced(), 64, 6)),  # + 6 at batch 1
    "stack_t1": Reference(sample_run, lambda: (STACK_PROMPT, 2000, 1.0, 5)),
    # tests/test_scale_out.py: the code prompts of its mixed batch, 32 tokens; the first also alone.
    "scale_out": Reference(greedy_run, lambda: (list(CODE_PROMPTS[:3]), 32, 1)),
    "stack_t07": Reference(sample_run, lambda: (STACK_PROMPT, 2000, 0.7, 5)),  # a wrong distribution (control)
    "stack_t07_p09": Reference(sample_run, lambda: (STACK_PROMPT, 2000, 0.7, 5, 0.9)),
    # Seeded sampling of the code prompts (seed = prompt index), 24 tokens, at T=1 and at T=0.7 / top-p 0.9.
    "seeded_t1": Reference(seeded_sample_run, lambda: (list(CODE_PROMPTS[:8]), 24, 1.0)),
    "seeded_t07_p09": Reference(seeded_sample_run, lambda: (list(CODE_PROMPTS[:8]), 24, 0.7, 0.9)),
    # tests/test_attention_engine.py: contexts of several KV blocks (packed pages, sparse rows), 48 tokens.
    "attention_long": Reference(greedy_run, lambda: (long_code_prompts(), 48, 1)),
}
