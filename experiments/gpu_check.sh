#!/usr/bin/env bash
# On a machine with an accelerator: device-agnostic tests, the benchmark, and a short real run.
# Usage: experiments/gpu_check.sh [DATA_DIR]   (needs train.csv/test.csv, or fetches them)
# Prints images/s (train, predict) and the local accuracy after 3 epochs; ~5 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data}
work=$(mktemp -d)
python -c "import jax; print('devices:', jax.devices())"
python -m pytest -q -x -p no:cacheprovider tests/test_models.py tests/test_steps.py \
  tests/test_augment.py tests/test_optim.py tests/test_config.py
python -m dr_jax bench --batch 86 --steps 40 --repeats 3 | tail -1
python -m dr_jax fetch --data-dir "$data"
python -m dr_jax train --config experiments/default.py --workdir "$work/run" --data-dir "$data" \
  --config.num_epochs=3
python -m dr_jax predict --workdir "$work/run" --data-dir "$data" >/dev/null
if [ -f "$data/test_answers.csv" ]; then
  python -m dr_jax score "$work/run/submission.csv" --data-dir "$data"
fi
