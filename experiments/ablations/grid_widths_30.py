"""Grid: default.py (30 epochs) with its strided CNN at (24, 48, 96) and at (16, 32, 64).

The Kaggle recipe's widths are (32, 64, 128) (strided.py); narrower, the train step costs 0.57
and 0.26 of its FLOPs and trains 1.8× and 2.9× the images per second on a 2-core CPU
(`dr-jax bench --config.model.kwargs.widths=...`). The rows say what each width costs in
accuracy at the same 30 epochs; the reference is the 30-epoch label-smoothing row of
grid_levers_30.py, (32, 64, 128) on the same seeds and splits. The first row is default.py as it
now stands: this grid chose it.
Command: dr-jax sweep experiments/ablations/grid_widths_30.py --seeds 2 --workdir runs/widths30
Measured (CPU-2s; docs/ablations.md, "Width of the strided CNN, 30 epochs"): last-epoch
validation errors 14 and 17 at (24, 48, 96), 26 and 18 at (16, 32, 64), against 12 and 17;
local test accuracy 0.99529, 0.99539 and 0.99436, 0.99432; 893 s and 516-593 s a run.
`dr-jax train --config` on this file trains the first variant (get_config).
"""

import pathlib

from dr_jax.config import load_config

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1]


def get_grid():
  grid = []
  for widths in ((24, 48, 96), (16, 32, 64)):
    c = load_config(EXPERIMENTS / "default.py")
    c.train.max_minutes = 0.0  # Measured at 30 epochs; default.py caps its time.
    c.model.kwargs.widths = widths
    grid.append((f"widths_{widths[0]}", c))
  return grid


def get_config():
  return get_grid()[0][1]
