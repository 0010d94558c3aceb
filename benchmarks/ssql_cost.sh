#!/usr/bin/env bash
# SSQL's wall-clock cost: essl trained with and without the SSQL term, in turns (A B A B ...) on one
# machine, so drift and noise fall on both. Prints images/s end to end (from each run's summary.json)
# with the load average before each run. Run it on a quiet machine; nothing else timed beside it.
#   DATA=fashion-mnist EPOCHS=1 ROUNDS=2 OUT=runs/ssql-cost bash benchmarks/ssql_cost.sh
set -euo pipefail
DATA=${DATA:-fashion-mnist}
EPOCHS=${EPOCHS:-1}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-runs/ssql-cost}
mkdir -p "$OUT"
echo "| round | arm | images/s | train s | load avg before |"
echo "|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
  for arm in essl essl+ssql; do
    extra=()
    [ "$arm" = essl+ssql ] && extra=(--ssql-weight 1)
    run="$OUT/$arm-$r"
    rm -rf "$run"
    load=$(cut -d' ' -f1 /proc/loadavg)
    leanssl train --data "$DATA" --method essl --epochs "$EPOCHS" --out "$run" --no-progress "${extra[@]}" > "$run.log" 2>&1
    python -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"| $r | $arm | {s['images_per_s']:.0f} | {s['train_seconds']:.1f} | $load |\")" "$run/summary.json"
  done
done
