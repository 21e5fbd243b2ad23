#!/usr/bin/env bash
# Mapping the chat template's closing positions (solve.positions) on Qwen2.5-Coder-0.5B-Instruct
# (float32 folder built by tests/qwen.py). Two probes recording the last 5 prompt positions:
# WS100 (the first 100 MultiJail ids, as bench/qwen_effect.sh) for comparing variants on
# development prompts (fit-split ids that probe did not read, bench/effect.py --development),
# WSALL (every id, what `swe align` probes by default) for the held-out measurement.
# Usage: bash bench/qwen_positions.sh QWEN_FOLDER WS100 WSALL
set -euo pipefail
QWEN=$1
WS100=$2
WSALL=$3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
HARMFUL=${HARMFUL:-../shared/data/multijail/MultiJail.csv}
probe() {  # probe WS [MAX_PROMPTS]
  swe probe "$QWEN" -w "$1" --langs bn,sw,th --harmful "$HARMFUL" \
    --harmless swe_cli/data/harmless.jsonl --general swe_cli/data/general.jsonl \
    --stats-layers 12,15 --batch-size 16 --dtype float32 --positions 5 ${2:+--max-prompts $2}
}
[ -f "$WS100/stats/L12.safetensors" ] || probe "$WS100" 100
[ -f "$WSALL/stats/L12.safetensors" ] || probe "$WSALL"
D="residual@12 rank=32 alpha=10 beta=10 keep_hrl=true strength=1.5"
# development: 32 harmful prompts per language, the borderline set's fit split (30 per language)
python bench/effect.py "$QWEN" -w "$WS100" --max-prompts 32 --max-new-tokens 8 --utility-items 0 \
  --borderline swe_cli/data/borderline.jsonl --development "$HARMFUL" \
  --methods "base;default;$D positions=5;$D positions=5 strength=1;refusal@12 strength=4 keep_hrl=true positions=5" \
  --json "$WS100/development.json"
# held-out: 24 harmful, harmless and borderline prompts per language
python bench/effect.py "$QWEN" -w "$WSALL" --max-prompts 24 --max-new-tokens 16 --utility-items 0 \
  --borderline swe_cli/data/borderline.jsonl --methods "base;default;$D positions=5" \
  --json "$WSALL/effect.json"
