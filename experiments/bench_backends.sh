#!/usr/bin/env bash
# XLA:CPU's convolution back ends under each instruction set, in one invocation, round-robin.
# Usage: experiments/bench_backends.sh [ROUNDS] [OUT.jsonl]   (defaults: 2, bench_backends.jsonl)
# For each round, ISA (AVX2 limit, AVX-512), model (default strided, classic) and back end it runs
# `dr-jax bench` and appends its JSON line, tagged, to OUT; then prints a table of each figure
# against the fast path of the same round, ISA and model. About 12 minutes a round on 2 cores.
#   fast       the shipped fast path (YNNPACK reduce fusions only, Eigen convolutions)
#   ynn_conv   YNNPACK's individual-convolution fusions as well
#   onednn     oneDNN's custom calls (--xla_cpu_use_onednn, --xla_cpu_experimental_onednn_custom_call)
#   onednn_dot oneDNN's library fusions of dots (--xla_cpu_experimental_onednn_fusion_type)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
out=${2:-bench_backends.jsonl}
: >"$out"
# No persistent cache: each compile is timed, and no program is shared between back ends.
export DR_JAX_COMPILATION_CACHE=off
declare -A flags=(
  [fast]=""
  [ynn_conv]="--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
  [onednn]="--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
  [onednn_dot]="--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
)
# ynn_conv sets the fusion types through XLA_FLAGS, which the fast path's per-program option
# would override: it runs with train.fast_cpu off (every other fast-path part stays on).
declare -A keys=([fast]="" [ynn_conv]="--config.train.fast_cpu=false" [onednn]="" [onednn_dot]="")
declare -A models=([default]="--config default" [classic]="--config classic --batch 86")
for round in $(seq 1 "$rounds"); do
  for isa in AVX2 AVX512; do
    for model in default classic; do
      for backend in fast ynn_conv onednn onednn_dot; do
        echo "round $round, $isa, $model, $backend" >&2
        # shellcheck disable=SC2086  # the flags and keys are word lists
        line=$(XLA_FLAGS="${flags[$backend]}" python -m dr_jax bench ${models[$model]} \
                 --isa "$isa" --steps 20 --repeats 3 ${keys[$backend]} | tail -n 1)
        echo "{\"round\": $round, \"limit\": \"$isa\", \"config\": \"$model\", \"backend\": \"$backend\", ${line#\{}" >>"$out"
      done
    done
  done
done
python - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
base = {(r["round"], r["limit"], r["config"]): r for r in rows if r["backend"] == "fast"}
print("| round | ISA | config | back end | train images/s (× fast) | predict images/s (× fast) "
      "| train compile s | matmul GFLOP/s |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
  b = base[r["round"], r["limit"], r["config"]]
  print(f"| {r['round']} | {r['limit']} | {r['config']} | {r['backend']} "
        f"| {r['train_images_per_s']:,.0f} ({r['train_images_per_s'] / b['train_images_per_s']:.2f}×) "
        f"| {r['predict_images_per_s']:,.0f} ({r['predict_images_per_s'] / b['predict_images_per_s']:.2f}×) "
        f"| {r['train_compile_s']:.1f} | {r['matmul_gflops_per_s']:.0f} |")
PY
