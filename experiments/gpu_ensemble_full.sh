#!/usr/bin/env bash
# On one GPU: train experiments/ensemble_full.py once per seed, the runs side by side, then
# predict, score and validate each. The figures in ensemble_full.py's docstring come from this.
# Usage: experiments/gpu_ensemble_full.sh DATA_DIR WORK_DIR SEED [SEED ...]
# Writes WORK_DIR/seed<S>/ (the run, train.log, submission*.csv) and prints every figure.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 work=$2
shift 2
seeds=("$@")
python -m dr_jax fetch --data-dir "$data"
# JAX takes 75% of the GPU's memory by default; runs side by side must share it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python -c "print(round(0.9 / ${#seeds[@]}, 2))")
start=$(date +%s)
pids=()
for s in "${seeds[@]}"; do
  mkdir -p "$work/seed$s"
  python -m dr_jax train --config experiments/ensemble_full.py --workdir "$work/seed$s" \
    --data-dir "$data" --config.seed="$s" >"$work/seed$s/train.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
echo "training: $(($(date +%s) - start)) s wall for ${#seeds[@]} run(s) side by side"
for s in "${seeds[@]}"; do
  run=$work/seed$s
  echo "== seed $s: $(grep -c . "$run/metrics.jsonl") epochs; last: $(tail -1 "$run/metrics.jsonl" |
    python -c "import json,sys; m=json.load(sys.stdin); print(m['best_epoch'], m['best_val_accuracy'], round(m['images_per_s']))")"
  for opt in "" "--tta 5" "--vote"; do
    out=$run/submission$(echo "$opt" | tr -d ' -').csv
    t0=$(date +%s)
    python -m dr_jax predict --workdir "$run" --data-dir "$data" --out "$out" $opt >/dev/null
    echo "predict ${opt:-(as configured)}: $(python -m dr_jax score "$out" --data-dir "$data")" \
      "($(($(date +%s) - t0)) s with start-up)"
  done
  python -m dr_jax validate --workdir "$run" --data-dir "$data" --tta 1 5
done
