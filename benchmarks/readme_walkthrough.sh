#!/usr/bin/env bash
# The README's "Using it" section, step by step, each step's wall-clock printed as a markdown row.
# Run it on a quiet machine from a clean clone (pip install -e ".[test]" first):
#     bash benchmarks/readme_walkthrough.sh              # Fashion-MNIST, the README's 20 epochs
#     DATA=digits EPOCHS=1 PROTOCOLS=knn bash benchmarks/readme_walkthrough.sh   # quick check that every step runs
set -euo pipefail
DATA=${DATA:-fashion-mnist}
EPOCHS=${EPOCHS:-20}
PROTOCOLS=${PROTOCOLS:-knn,linear,finetune,fewshot,lowlabel}
OUT=${OUT:-runs/walkthrough}
LEANSSL=${LEANSSL:-leanssl}
rm -rf "$OUT" && mkdir -p "$OUT"
echo "| step | command | seconds |"
echo "|---|---|---|"
step() {  # step NAME COMMAND...: run it, print its row (stdout/stderr of the command go to $OUT/log.txt)
    local name=$1; shift
    local t0 ms; t0=$(date +%s%N)
    "$@" >>"$OUT/log.txt" 2>&1
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    printf '| %s | `%s` | %d.%d |\n' "$name" "$*" $((ms / 1000)) $((ms % 1000 / 100))
}
step "pretrain" $LEANSSL train --data "$DATA" --method essl --backbone small_cnn --epochs "$EPOCHS" --out "$OUT/fm" --no-progress
step "evaluate ($PROTOCOLS)" $LEANSSL eval "$OUT/fm" --data "$DATA" --protocol "$PROTOCOLS"
step "evaluate (json)" $LEANSSL eval "$OUT/fm" --data "$DATA" --json --no-baselines
step "evaluate (10 labels/class)" $LEANSSL eval "$OUT/fm" --data digits --labels-per-class 10
step "resume a finished run" $LEANSSL train --data "$DATA" --out "$OUT/fm" --resume --no-progress
step "export" $LEANSSL export "$OUT/fm" --format safetensors --out "$OUT/fm.safetensors"
step "embed" $LEANSSL embed "$OUT/fm" --data "$DATA" --out "$OUT/fm-emb.npy" --no-progress
step "map" $LEANSSL map "$OUT/fm" --data "$DATA" --out "$OUT/fm-map" --no-progress
step "select" $LEANSSL select "$OUT/fm" --data "$DATA" --count 100 --out "$OUT/to-label.csv" --no-progress
