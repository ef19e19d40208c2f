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
  "declab bench spec --configs vanilla,pearl,specdec_pp,rapid --phases batch1 --batch1-limit 0 --out measurements/draft-models-all-batch1"
  # plugin benches: reports in plugins/<name>/measurements/
  "declab bench contrastive --items 100 --out plugins/cad/measurements"
  "declab bench contrastive --parts cost --no-naive --out plugins/cfg/measurements"
  "declab bench spec-tree --limit 1 --out plugins/token_recycling/measurements"
  "declab bench verify-cost --cost-from plugins/token_recycling/measurements/verify-cost-h100.json --spec-report measurements/spec.json --out plugins/token_recycling/measurements/h100-projection"
  "declab bench diverse-beam --out plugins/diverse_beam/measurements"
  "declab bench superposed --code-prompts 8 --spec-bench-per-category 1 --out plugins/superposed/measurements"
  "declab bench ead --out plugins/ead/measurements"
  "declab bench degeneration --prompts 16 --max-tokens 128 --repeats 2 --latency-prompts 2 --out plugins/momentum/measurements"
  # SpecDec++'s acceptance head: trains plugins/specdec_pp/acceptance_head.safetensors and reports its calibration
  "python -m declab.plugins.specdec_pp.train_head --out plugins/specdec_pp/measurements"
  "declab bench grammar --kl-n 300 --checkpoints 100,300 --limit 1 --backends xgrammar,gcd,asap --budget-requests 200 --out plugins/asap/measurements"
  # the fuzz suite at full size (issue #13): measurements/fuzz.json
  "make fuzz FUZZ_CASES=1000"
  # the README's main job
  "declab demo --out measurements/demo"
)
# Made on another machine; not rerun by this script (the lent H100 had no vLLM, only torch + transformers):
#   declab bench verify-cost --synthetic llama-7b --out plugins/token_recycling/measurements    (then renamed to
#   verify-cost-h100.json; a second run: verify-cost-h100-run2.json)

for command in "${COMMANDS[@]}"; do
  if [[ $# -eq 0 || "$command" == *"$1"* ]]; then
    echo "== $command (load $(cut -d' ' -f1-3 /proc/loadavg))"
    $command
  fi
done
