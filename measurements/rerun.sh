#!/usr/bin/env bash
# Regenerates every report the READMEs cite (tests/test_measurements.py checks that each committed report's command
# line is listed here). Run from anywhere on a quiet machine (timings on shared cores are not comparable: every
# report records the load average at its start and end). The sizes are those that finished on the shared 2-core
# machine these reports were made on; larger runs (e.g. --items 400, spec without --limit) change the README's
# figures, which tests/test_measurements.py then reports one by one.
#   measurements/rerun.sh            # all CPU reports
#   measurements/rerun.sh overhead   # only the lines whose command contains "overhead"
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"

COMMANDS=(
  # generic benches: reports in measurements/
  "declab bench overhead --out measurements"
  "declab bench spec --limit 1 --out measurements"
  "declab bench verify-cost --batch-sizes 1 --threads 1 --spec-report measurements/spec.json --out measurements"
  "declab bench draft-agreement --out measurements"
  # draft-model proposers (issue #14): vLLM's draft_model swept on the same prompts, then every fitting prompt
  "declab bench spec --configs vanilla,draft_model,pearl,specdec_pp,rapid,rapid_full_context,ead --limit 4 --batch1-limit 1 --draft-ks 1,2,3,4,5,6,7,8 --draft-sweep-on selected --out measurements/draft-models"
  "declab bench verify-cost --batch-sizes 1,16 --threads 1 --spec-report measurements/draft-models/spec.json --out measurements/draft-models"
  "declab bench verify-cost --cost-from plugins/token_recycling/measurements/verify-cost-h100.json --spec-report measurements/draft-models/spec.json --out measurements/draft-models/h100-projection"
  "declab bench spec --configs vanilla,pearl,specdec_pp,rapid --batch1-limit 2 --out measurements/draft-models-all"
  # the draft-tree proposers (RSD, SpecTr, DySpec) against vLLM's draft_model at its best chain (K swept): greedy on
  # every fitting prompt, then sampling at temperature 1 (vLLM's methods run with its CPU fixes, DECLAB_VLLM_FIXES)
  "declab bench spec --configs vanilla,draft_model,rsd,spectr,dyspec --batch1-limit 1 --draft-ks 4,8,12 --draft-choose tokens_per_forward --out measurements/draft-trees"
  "declab bench spec --configs vanilla,rsd,spectr,dyspec --phases batch1 --batch1-limit 0 --out measurements/draft-trees-batch1"
  "declab bench spec --configs vanilla,draft_model,rsd,rsd_gumbel,spectr,dyspec --temperature 1 --limit 2 --batch1-limit 1 --draft-ks 4,8,12 --draft-sweep-on selected --draft-choose tokens_per_forward --out measurements/draft-trees-t1"
  "declab bench verify-cost --cost-from plugins/token_recycling/measurements/verify-cost-h100.json --spec-report measurements/draft-trees/spec.json --out measurements/draft-trees/h100-projection"
  "declab bench verify-cost --cost-from plugins/token_recycling/measurements/verify-cost-h100.json --spec-report measurements/draft-trees-t1/spec.json --out measurements/draft-trees-t1/h100-projection"
  "python measurements/draft_model_sampling_probe.py --out measurements/draft-model-sampling.json"
  "declab bench spectr-grid --out plugins/spectr/measurements"
  "declab bench spec --configs vanilla,pearl,specdec_pp,rapid --phases batch1 --batch1-limit 0 --out measurements/draft-models-all-batch1"
  # RAPID against vLLM's draft_model on the long-context prompts (RAG, summarization; long code files): three runs each
  # and their summaries
  # are in the quoted block below
  # draft-5m-long (integrations/default_model/draft-5m-long): trains its delta (three stages, in order), then its
  # agreement with decoder-29m
  "python -m declab.integrations.draft_training --seconds 3300 --threads 2"
  "python -m declab.integrations.draft_training --seconds 2700 --threads 1 --lr 1e-3 --prose-share 0.5 --init-delta integrations/default_model/draft-5m-long/delta.safetensors --out measurements/draft-5m-long/prose"
  "python -m declab.integrations.draft_training --seconds 2400 --threads 2 --lr 1e-3 --prose-share 0.5 --batch-size 4 --continuations 64 --init-delta integrations/default_model/draft-5m-long/delta.safetensors --out measurements/draft-5m-long/continuations"
  "declab bench draft-agreement --draft draft-5m-long --out measurements/draft-5m-long"
  "python -m declab.plugins.rapid.context_study --draft draft-5m-long --out measurements/rapid-context-study"
  # issue #16's proposers on every fitting prompt at batch 1, 16 and 64; summary; H100 projections (batch 1 and 16)
  "declab bench spec --configs vanilla,ngram,suffix,token_recycling_chain,token_recycling_tree,hybrid,aded,aded_tree,sjd --ngram 1,3,8 --proposer-k 8 --phases batch1 --batch1-limit 0 --out measurements/self-spec-all-b1"
  "declab bench spec --configs vanilla,ngram,suffix,token_recycling_chain,token_recycling_tree,hybrid,aded,aded_tree,sjd --ngram 1,3,8 --proposer-k 8 --phases batch16 --out measurements/self-spec-all"
  "declab bench spec --configs vanilla,ngram,suffix,token_recycling_chain,token_recycling_tree,hybrid,aded,aded_tree,sjd --ngram 1,3,8 --proposer-k 8 --batch-size 64 --phases batch16 --out measurements/self-spec-all-b64"
  "python -m declab.plugins.hybrid_drafter.summary measurements/self-spec-all/spec.json measurements/self-spec-all-b1/spec.json measurements/self-spec-all-b64/spec.json"
  "declab bench verify-cost --cost-from plugins/token_recycling/measurements/verify-cost-h100.json --spec-report measurements/self-spec-all-b1/spec.json --out measurements/self-spec-all-b1/h100-projection"
  "declab bench verify-cost --cost-from plugins/token_recycling/measurements/verify-cost-h100.json --spec-report measurements/self-spec-all/spec.json --out measurements/self-spec-all/h100-projection"
  # SWIFT (paper 49): adaptive vs a uniform skip set of the same size on the --limit 5 prompts (batch 16 and 1,
  # batch 64), then greedy identity on every fitting prompt (batch 16 and 1, batch 64); H100 projections
  "declab bench spec --configs vanilla,swift,swift_uniform --proposer-k 8 --batch-size 16 --limit 5 --batch1-limit 5 --out plugins/swift/measurements"
  "declab bench spec --configs vanilla,swift,swift_uniform --proposer-k 8 --batch-size 64 --limit 5 --phases batch16 --out plugins/swift/measurements/batch64"
  "declab bench spec --configs vanilla,swift --proposer-k 8 --batch1-limit 0 --out plugins/swift/measurements/all-prompts"
  "declab bench spec --configs vanilla,swift --proposer-k 8 --batch-size 64 --phases batch16 --out plugins/swift/measurements/all-prompts-b64"
  "declab bench verify-cost --cost-from plugins/token_recycling/measurements/verify-cost-h100.json --spec-report plugins/swift/measurements/spec.json --out plugins/swift/measurements/h100-projection"
  # plugin benches: reports in plugins/<name>/measurements/
  "declab bench contrastive --items 100 --out plugins/cad/measurements"
  "declab bench contrastive --parts cost --no-naive --out plugins/cfg/measurements"
  "declab bench spec-tree --limit 1 --out plugins/token_recycling/measurements"
  # Token Recycling's whole tree vs its chain at temperature 1 (the seam's sampling tree verifier)
  "declab bench spec --configs vanilla,token_recycling_chain,token_recycling_tree --temperature 1 --proposer-k 6 --limit 1 --out plugins/token_recycling/measurements/temperature-1"
  "declab bench verify-cost --cost-from plugins/token_recycling/measurements/verify-cost-h100.json --spec-report plugins/token_recycling/measurements/temperature-1/spec.json --out plugins/token_recycling/measurements/temperature-1/h100-projection"
  "declab bench verify-cost --cost-from plugins/token_recycling/measurements/verify-cost-h100.json --spec-report measurements/spec.json --out plugins/token_recycling/measurements/h100-projection"
  "declab bench diverse-beam --out plugins/diverse_beam/measurements"
  "declab bench superposed --code-prompts 8 --spec-bench-per-category 1 --out plugins/superposed/measurements"
  "declab bench ead --out plugins/ead/measurements"
  "declab bench attention --budgets 32,64,128 --codecs kivi:4,gear:4,gear:4:token,gear:8 --prompts 8 --max-tokens 128 --passages 6 --out plugins/gear/measurements"
  "declab bench degeneration --prompts 16 --max-tokens 128 --repeats 2 --latency-prompts 2 --out plugins/momentum/measurements"
  "declab bench contrastive-search --prompts 100 --max-tokens 32 --out plugins/contrastive_search/measurements"
  "declab bench degeneration --prompts 16 --max-tokens 128 --repeats 2 --latency-prompts 2 --skip-contrastive --out plugins/contrastive_search/measurements"
  # SpecDec++'s acceptance head: trains plugins/specdec_pp/acceptance_head.safetensors and reports its calibration
  "python -m declab.plugins.specdec_pp.train_head --out plugins/specdec_pp/measurements"
  # LOL (paper 29): trains the amateur (plugins/lol/amateur/lora.safetensors, report plugins/lol/measurements/amateur.json),
  # then its accuracy against greedy, layer contrast, CAD-style contrast and ICD
  "python -m declab.plugins.lol.train_amateur --seconds 900 --batch-size 8 --lr 5e-3 --examples 4000 --eval-items 40 --no-base-eval"
  "declab bench lol --items 100 --layers 4 --out plugins/lol/measurements"
  "declab bench grammar --kl-n 300 --checkpoints 100,300 --limit 1 --backends xgrammar,gcd,asap --budget-requests 200 --out plugins/asap/measurements"
  # the fuzz suite at full size (issue #13): measurements/fuzz.json
  "make fuzz FUZZ_CASES=1000"
  # issue #18's methods (their proposer on a server of its own): measurements/fuzz-search-guidance.json
  "make fuzz FUZZ_CASES=1000 FUZZ_PLUGINS=cfg,lol,superposed,contrastive_search FUZZ_REPORT=measurements/fuzz-search-guidance.json"
  # the README's main job
  "declab demo --out measurements/demo"
)
# Made on another machine; not rerun by this script (the lent H100 had no vLLM, only torch + transformers):
#   declab bench verify-cost --synthetic llama-7b --out plugins/token_recycling/measurements    (then renamed to
#   verify-cost-h100.json; a second run: verify-cost-h100-run2.json)

# Commands whose arguments hold JSON (shell-quoted exactly as their reports' provenance records them), one per line.
while IFS= read -r line; do COMMANDS+=("$line"); done <<'QUOTED'
declab bench spec --configs vanilla,swift,swift_uniform --proposer-k 8 --batch-size 16 --limit 5 --phases batch16 --settings 'swift={"skip_ratio": 0.25}' --out plugins/swift/measurements/skip-ratio-0.25
declab bench spec --configs vanilla,hybrid --proposer-k 8 --batch-size 16 --limit 5 --batch1-limit 5 --settings 'hybrid_drafter={"hindsight": true}' --out plugins/hybrid_drafter/measurements/hindsight
declab bench spec --configs vanilla,hybrid --proposer-k 8 --batch-size 64 --limit 5 --phases batch16 --settings 'hybrid_drafter={"hindsight": true}' --out plugins/hybrid_drafter/measurements/hindsight-b64
python -m declab.plugins.hybrid_drafter.summary plugins/hybrid_drafter/measurements/hindsight/spec.json
python -m declab.plugins.hybrid_drafter.summary plugins/hybrid_drafter/measurements/hindsight-b64/spec.json
declab bench spec --configs vanilla,swift,swift_uniform --proposer-k 8 --batch-size 16 --limit 5 --phases batch16 --settings 'swift={"skip_ratio": 0.35}' --out plugins/swift/measurements/skip-ratio-0.35
declab bench spec --configs vanilla,draft_model,pearl --draft-model draft-5m-long --settings 'pearl={"draft_model": "draft-5m-long"}' --limit 4 --batch1-limit 1 --draft-ks 1,2,3,4,5,6,7,8 --draft-sweep-on selected --out measurements/draft-5m-long/spec
declab bench spec --configs vanilla,draft_model,rapid,rapid_k2,rapid_k2_positions,rapid_full_context --groups rag,summarization --limit 16 --draft-model draft-5m-long --settings 'rapid={"draft_model": "draft-5m-long"}' --draft-ks 1,2,4 --draft-sweep-on selected --batch1-limit 2 --out measurements/rapid-long-context/run1
declab bench spec --configs vanilla,draft_model,rapid,rapid_k2,rapid_k2_positions,rapid_full_context --groups rag,summarization --limit 16 --draft-model draft-5m-long --settings 'rapid={"draft_model": "draft-5m-long"}' --draft-ks 1,2,4 --draft-sweep-on selected --batch1-limit 2 --out measurements/rapid-long-context/run2
declab bench spec --configs vanilla,draft_model,rapid,rapid_k2,rapid_k2_positions,rapid_full_context --groups rag,summarization --limit 16 --draft-model draft-5m-long --settings 'rapid={"draft_model": "draft-5m-long"}' --draft-ks 1,2,4 --draft-sweep-on selected --batch1-limit 2 --out measurements/rapid-long-context/run3
python -m declab.plugins.rapid.summary measurements/rapid-long-context/run1/spec.json measurements/rapid-long-context/run2/spec.json measurements/rapid-long-context/run3/spec.json
declab bench spec --configs vanilla,draft_model,rapid,rapid_k2,rapid_k2_positions,rapid_full_context --groups long_code --draft-model draft-5m-long --settings 'rapid={"draft_model": "draft-5m-long"}' --draft-ks 1,2,4 --draft-sweep-on selected --batch1-limit 2 --out measurements/rapid-long-code/run1
declab bench spec --configs vanilla,draft_model,rapid,rapid_k2,rapid_k2_positions,rapid_full_context --groups long_code --draft-model draft-5m-long --settings 'rapid={"draft_model": "draft-5m-long"}' --draft-ks 1,2,4 --draft-sweep-on selected --batch1-limit 2 --out measurements/rapid-long-code/run2
declab bench spec --configs vanilla,draft_model,rapid,rapid_k2,rapid_k2_positions,rapid_full_context --groups long_code --draft-model draft-5m-long --settings 'rapid={"draft_model": "draft-5m-long"}' --draft-ks 1,2,4 --draft-sweep-on selected --batch1-limit 2 --out measurements/rapid-long-code/run3
python -m declab.plugins.rapid.summary measurements/rapid-long-code/run1/spec.json measurements/rapid-long-code/run2/spec.json measurements/rapid-long-code/run3/spec.json
QUOTED

for command in "${COMMANDS[@]}"; do
  if [[ $# -eq 0 || "$command" == *"$1"* ]]; then
    echo "== $command (load $(cut -d' ' -f1-3 /proc/loadavg))"
    eval "$command"
  fi
done
