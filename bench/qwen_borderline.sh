#!/usr/bin/env bash
# Preserving borderline benign answers on Qwen2.5-Coder-0.5B-Instruct (docs/results.md,
# "Preserving borderline benign answers"). Run from the repository root:
#
#   bench/qwen_borderline.sh OUT split             # halve the borderline fit split (two files in OUT)
#   bench/qwen_borderline.sh OUT probe             # OUT/ws-b: probed with OUT/borderline-probe.jsonl
#   bench/qwen_borderline.sh OUT probe-plain       # OUT/ws100: the same probe without borderline
#   bench/qwen_borderline.sh OUT dev-base [WS100]  # base and default on WS100 (development prompts)
#   bench/qwen_borderline.sh OUT dev SPEC NAME     # one method on OUT/ws-b (development prompts)
#   bench/qwen_borderline.sh OUT dev-plain SPECS NAME [WS100] # methods on WS100 (development prompts)
#   bench/qwen_borderline.sh OUT final-base [WS100] # held-out prompts: base and default on WS100
#   bench/qwen_borderline.sh OUT final SPECS       # held-out prompts: SPECS (';'-separated) on OUT/ws-b
#   bench/qwen_borderline.sh OUT final-plain SPECS NAME [WS100] # held-out prompts: SPECS on WS100
#   bench/qwen_borderline.sh OUT table             # the development and held-out tables
#
# QWEN: the float32 folder tests/qwen.py converts. WS100 (default OUT/ws100): Qwen probed as in
# the probe step but without --borderline (--max-prompts 100, built-in harmless and general
# sets, moments of layers 12 and 15; STATS=12,18 for others: probe reuses the recorded
# activations of an earlier probe of the same folder and recomputes only the moments).
# Development compares on the fit-split MultiJail ids that neither workspace probed and on the other half of the borderline fit split
# (OUT/borderline-dev.jsonl), which no workspace probed: the same prompts in every row.
# Held-out: the held-out split, the same for both workspaces (probe fits the fit split only).
set -euo pipefail
OUT=$1
STEP=$2
QWEN=${QWEN:-/root/.cache/swe/qwen/Qwen2.5-Coder-0.5B-Instruct-0.9.0-float32-v1/Qwen2.5-Coder-0.5B-Instruct}
HARMFUL=${HARMFUL:-/work/shared/data/multijail/MultiJail.csv}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=$PWD
mkdir -p "$OUT"
probe() {  # probe WS [--borderline FILE]
  swe probe "$QWEN" -w "$1" --langs bn,sw,th --harmful "$HARMFUL" \
    --harmless swe_cli/data/harmless.jsonl --general swe_cli/data/general.jsonl \
    --stats-layers "${STATS:-12,15}" --batch-size 16 --dtype float32 --max-prompts 100 "${@:2}"
}
dev() {  # dev WS JSON METHODS
  python bench/effect.py "$QWEN" -w "$1" --max-prompts 32 --max-new-tokens 8 --utility-items 0 \
    --borderline "$OUT/borderline-dev.jsonl" --development "$HARMFUL" --methods "$3" --json "$2" \
    | tee "${2%.json}.log"
}
final() {  # final WS JSON METHODS
  python bench/effect.py "$QWEN" -w "$1" --max-prompts 24 --max-new-tokens 16 --utility-items 0 \
    --borderline swe_cli/data/borderline.jsonl --methods "$3" --json "$2" | tee "${2%.json}.log"
}
case $STEP in
split)
  # the borderline fit-split ids (swe's default held-out fraction), alternately to the probe
  # half and the development half, in sorted order
  python - "$OUT" <<'EOF'
import json, sys
from swe_cli.prompts import FIT, split_of
rows = [json.loads(line) for line in open("swe_cli/data/borderline.jsonl", encoding="utf-8")]
fit = sorted({r["id"] for r in rows if split_of(r["id"], 0.5) == FIT})
for name, keep in (("borderline-probe", set(fit[0::2])), ("borderline-dev", set(fit[1::2]))):
    with open(f"{sys.argv[1]}/{name}.jsonl", "w", encoding="utf-8") as out:
        out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["id"] in keep)
    print(name, sorted(keep))
EOF
  ;;
probe) probe "$OUT/ws-b" --borderline "$OUT/borderline-probe.jsonl" ;;
probe-plain) probe "$OUT/ws100" ;;
dev-base) dev "${3:-$OUT/ws100}" "$OUT/dev-ws100.json" "base;default" ;;
dev) dev "$OUT/ws-b" "$OUT/dev-$4.json" "$3" ;;
dev-plain) dev "${5:-$OUT/ws100}" "$OUT/dev-ws100-$4.json" "$3" ;;
final-base) final "${3:-$OUT/ws100}" "$OUT/final-ws100.json" "base;default" ;;
final) final "$OUT/ws-b" "$OUT/final-ws-b.json" "$3" ;;
final-plain) final "${5:-$OUT/ws100}" "$OUT/final-ws100-$4.json" "$3" ;;
table)
  # one row per (workspace, method), closures against the base row of the same prompts; read
  # from the logs (OUT/*.log) of the dev-base, dev, final-base and final steps
  python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from swe_cli.report import gap_closure
out = Path(sys.argv[1])
devs = sorted(p.name for p in out.glob("dev-*.log") if p.name != "dev-ws100.log")
for title, n, files in (
    ("development: 32 MultiJail ids and 15 borderline ids per language, 8 tokens", 32,
     ["dev-ws100.log", *devs]),
    ("held-out: 24 MultiJail ids per language, the borderline held-out split, 16 tokens", 24,
     ["final-ws100.log", *sorted(p.name for p in out.glob("final-ws100-*.log")), "final-ws-b.log"]),
):
    rows = []  # the rows effect.py prints as it goes (also those of a run still going)
    for name in files:
        if (out / name).exists():
            probed = "no" if "ws100" in name else "half"
            lines = (out / name).read_text(encoding="utf-8").splitlines()
            rows += [(probed, json.loads(line)) for line in lines if line.startswith("{")]
    if not rows:
        continue
    base = next(row for _, row in rows if row["method"] == "base")
    langs = ["bn", "sw", "th"]
    cols = ["asr_en", *[f"asr_{l}" for l in langs], *[f"closure_{l}" for l in langs], "closure_mean",
            "harmless_refusal", "borderline_refusal",
            *[f"borderline_refusal_{l}" for l in ["en", *langs]], "kl"]
    print(f"\n{title}\n")
    print("| borderline probed | method | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    for probed, row in rows:
        for l in langs:
            row[f"closure_{l}"] = gap_closure(base[f"asr_{l}"], row[f"asr_{l}"], base["asr_en"], n)
        closed = sum(base[f"asr_{l}"] - row[f"asr_{l}"] for l in langs)
        row["closure_mean"] = closed / sum(base[f"asr_{l}"] - base["asr_en"] for l in langs)
        cells = ["-" if row.get(c) is None else f"{row[c]:.4f}" if c == "kl" else f"{row[c]:.3f}"
                 for c in cols]
        label = "-" if row["method"] == "base" else probed
        print(f"| {label} | {row['method']} | " + " | ".join(cells) + " |")
EOF
  ;;
*) echo "unknown step: $STEP" >&2; exit 2 ;;
esac
