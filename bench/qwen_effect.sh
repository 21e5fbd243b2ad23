#!/usr/bin/env bash
# The held-out effect of the mapping variants on Qwen2.5-Coder-0.5B-Instruct (float32 folder
# built by tests/qwen.py): one probe (100 MultiJail ids, fit half), then base, the recipe's
# default and each variant on the same held-out prompts, in memory (bench/effect.py).
# Usage: bash bench/qwen_effect.sh QWEN_FOLDER WORKSPACE [MAX_PROMPTS] [MAX_NEW_TOKENS]
set -euo pipefail
QWEN=$1
WS=$2
PROMPTS=${3:-12}
TOKENS=${4:-8}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
HARMFUL=${HARMFUL:-../shared/data/multijail/MultiJail.csv}
if [ ! -f "$WS/stats/L12.safetensors" ]; then
  swe probe "$QWEN" -w "$WS" --langs bn,sw,th --harmful "$HARMFUL" \
    --harmless swe_cli/data/harmless.jsonl --general swe_cli/data/general.jsonl \
    --stats-layers 12,15 --max-prompts 100 --batch-size 16 --dtype float32
fi
D="residual@12 rank=32 alpha=10 beta=10 keep_hrl=true strength=1.5"
python bench/effect.py "$QWEN" -w "$WS" --max-prompts "$PROMPTS" --max-new-tokens "$TOKENS" \
  --utility-items 0 --borderline swe_cli/data/borderline.jsonl \
  --methods "base;default;$D harmless_targets=1;$D harmless_targets=0.25;$D lang_strength=sw=2,th=2" \
  --json "$WS/effect.json"
