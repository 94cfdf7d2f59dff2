"""Grid: default.py (30 epochs) with its strided CNN narrowed to (24, 48, 96) and (16, 32, 64).

default.py's widths (32, 64, 128) are the Kaggle recipe's; narrower, the train step costs 0.57
and 0.26 of its FLOPs and trains 1.7× and 2.8× the images per second on a 2-core CPU
(`dr-jax bench --config.model.kwargs.widths=...`). The rows say what each width costs in
accuracy at the same 30 epochs; default.py itself is the reference (docs/ablations.md's
30-epoch table, the same seeds and splits).
Command: dr-jax sweep experiments/ablations/grid_widths_30.py --seeds 2 --workdir runs/widths30
Results: docs/ablations.md ("Width of the strided CNN, 30 epochs"), measured with the command above.
`dr-jax train --config` on this file trains the first variant (get_config).
"""

import pathlib

from dr_jax.config import load_config

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1]


def get_grid():
  grid = []
  for widths in ((24, 48, 96), (16, 32, 64)):
    c = load_config(EXPERIMENTS / "default.py")
    c.model.kwargs.widths = widths
    grid.append((f"widths_{widths[0]}", c))
  return grid


def get_config():
  return get_grid()[0][1]
