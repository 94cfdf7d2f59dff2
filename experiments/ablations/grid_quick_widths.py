"""Grid: quick.py against default.py's strided CNN made narrower, each under a 5-minute budget.

The strided CNN's widths (32, 64, 128) are the Kaggle recipe's; at (24, 48, 96) its train step
costs 0.57 of the FLOPs and at (16, 32, 64) 0.26, and `dr-jax bench
--config.model.kwargs.widths=...` trains 1.8× and 2.9× the images per second. The rows compare
accuracy per 5 minutes: quick.py (the residual CNN, first, so the sweep pairs the others with
it), and default.py (label smoothing 0.1) at each narrower width.
Command:
  dr-jax sweep experiments/ablations/grid_quick_widths.py --seeds 2 --workdir runs/quick_widths
Measured (CPU-2s, docs/results.md "Narrower strided CNNs under the same 5 minutes"): 8 and 14
epochs fit; last-epoch validation errors 62 and 66 of 8,400 (seeds 0, 1) against quick.py's 40,
local test accuracy 0.9893-0.9919 against 0.99396 and 0.99418; about 5 minutes a run.
`dr-jax train --config` on this file trains the first variant (get_config).
"""

import pathlib

from dr_jax.config import load_config

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1]
BUDGET_MINUTES = 5.0


def get_grid():
  grid = [("residual", load_config(EXPERIMENTS / "quick.py"))]
  for widths in ((24, 48, 96), (16, 32, 64)):
    c = load_config(EXPERIMENTS / "default.py")
    c.model.kwargs.widths = widths
    grid.append((f"strided_{widths[0]}", c))
  for _, c in grid:
    c.train.budget_minutes = BUDGET_MINUTES
  return grid


def get_config():
  return get_grid()[0][1]
