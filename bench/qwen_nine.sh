#!/usr/bin/env bash
# One edit for all nine MultiJail languages on Qwen2.5-Coder-0.5B-Instruct (docs/results.md,
# "All nine languages"). Run from the repository root:
#
#   bench/qwen_nine.sh OUT probe          # OUT/ws9: zh,it,vi,ar,ko,th,bn,sw,jv probed like bench/qwen_borderline.sh's ws100
#   STATS=12,18 bench/qwen_nine.sh OUT probe  # moments of layers 12 and 18 (default 12); probe reuses recorded activations
#   bench/qwen_nine.sh OUT dev SPECS BORDERLINE_DEV [NAME]  # development prompts: SPECS on OUT/ws9
#   bench/qwen_nine.sh OUT final [SPECS NAME]  # held-out prompts: SPECS (default: base and the recipe) on OUT/ws9
#   bench/qwen_nine.sh OUT group NAME LANGS   # OUT/NAME/ws9: OUT/ws9 (hard links) naming only LANGS
#   bench/qwen_nine.sh OUT/NAME final [SPECS NAME]  # then: one edit for that language group
#
# BORDERLINE: the borderline set whose held-out split the final step judges (default the built-in
# one; a run to compare with one made before the set grew gives that version of the file).
# QWEN: the float32 folder tests/qwen.py converts. Probe caps MultiJail at 100 ids before the
# fit/held-out split by id, as the three-language workspace of bench/qwen_borderline.sh does, so
# the held-out bn, sw and th prompts are the same in both and their rows compare directly.
set -euo pipefail
OUT=$1
STEP=$2
QWEN=${QWEN:-/root/.cache/swe/qwen/Qwen2.5-Coder-0.5B-Instruct-0.9.0-float32-v1/Qwen2.5-Coder-0.5B-Instruct}
HARMFUL=${HARMFUL:-/work/shared/data/multijail/MultiJail.csv}
LANGS=zh,it,vi,ar,ko,th,bn,sw,jv
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=$PWD
mkdir -p "$OUT"
case $STEP in
probe)
  swe probe "$QWEN" -w "$OUT/ws9" --langs "$LANGS" --harmful "$HARMFUL" \
    --harmless swe_cli/data/harmless.jsonl --general swe_cli/data/general.jsonl \
    --stats-layers "${STATS:-12}" --batch-size 16 --dtype float32 --max-prompts 100 --json \
    > "$OUT/probe.json"
  ;;
dev)
  # BORDERLINE_DEV: the development half of the borderline fit split (bench/qwen_borderline.sh's
  # split step writes it for every language); harmful development prompts: the fit-split ids
  # beyond the 100 probed
  python bench/effect.py "$QWEN" -w "$OUT/ws9" --max-prompts 32 --max-new-tokens 8 \
    --utility-items 0 --borderline "$4" --development "$HARMFUL" --methods "$3" \
    --json "$OUT/dev-ws9${5:+-$5}.json" | tee "$OUT/dev-ws9${5:+-$5}.log"
  ;;
final)
  python bench/effect.py "$QWEN" -w "$OUT/ws9" --max-prompts 24 --max-new-tokens 16 \
    --utility-items 0 --borderline "${BORDERLINE:-swe_cli/data/borderline.jsonl}" --methods "${3:-base;default}" \
    --json "$OUT/final-ws9${4:+-$4}.json" | tee "$OUT/final-ws9${4:+-$4}.log"
  ;;
group)
  # the edit of a language group reads the nine-language probe (the moments cover every
  # language's text, as a probe of the group alone would not); only the manifest's language
  # list differs, written anew so that the hard-linked original is not changed
  mkdir -p "$OUT/$3" && rm -rf "$OUT/$3/ws9" && cp -al "$OUT/ws9/." "$OUT/$3/ws9"
  rm "$OUT/$3/ws9/workspace.yaml"
  python - "$LANGS" "$4" "$OUT/ws9/workspace.yaml" "$OUT/$3/ws9/workspace.yaml" <<'PY'
import sys
nine, langs = sys.argv[1].split(","), sys.argv[2].split(",")
source, target = sys.argv[3], sys.argv[4]
text = open(source, encoding="utf-8").read()
block = "langs:\n" + "".join(f"- {lang}\n" for lang in nine)
if text.count(block) != 1 or not set(langs) <= set(nine):
    sys.exit(f"{source} does not list the nine languages, or {langs} is not a subset of them")
text = text.replace(block, "langs:\n" + "".join(f"- {lang}\n" for lang in langs))
open(target, "w", encoding="utf-8").write(text)
PY
  ;;
*) echo "unknown step: $STEP" >&2; exit 2 ;;
esac
