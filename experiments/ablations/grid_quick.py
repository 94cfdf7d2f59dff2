"""Grid: the candidates for experiments/quick.py, each as many epochs as fit a 5-minute budget.

The strided CNN (default.py), the residual CNN (residual.py), the residual CNN without
dropout, and the residual CNN with batches of 128 at learning rate 2e-3, all under
train.budget_minutes = 5: on a slow machine the cheaper model fits more epochs, so the rows
compare accuracy per 5 minutes, not per epoch.
Command: dr-jax sweep experiments/ablations/grid_quick.py --seeds 2 --workdir runs/quick
Results: docs/results.md ("Quick runs"), measured with the command above.
`dr-jax train --config` on this file trains the first variant (get_config).
"""

import pathlib

from dr_jax.config import load_config

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1]
BUDGET_MINUTES = 5.0


def get_grid():
  strided = load_config(EXPERIMENTS / "default.py")
  strided.train.label_smoothing = 0.0  # As measured; residual.py has none either.
  strided.model.kwargs.widths = (32, 64, 128)  # As measured; default.py's are narrower.
  residual = load_config(EXPERIMENTS / "residual.py")
  residual_nodrop = load_config(EXPERIMENTS / "residual.py")
  residual_nodrop.model.kwargs.dropout = 0.0
  # Twice the batch at twice the learning rate: half the steps (measured no faster per image).
  residual_b128 = load_config(EXPERIMENTS / "residual.py")
  residual_b128.batch_size, residual_b128.optimizer.lr = 128, 2e-3
  grid = [("strided", strided), ("residual", residual), ("residual_nodrop", residual_nodrop),
          ("residual_b128", residual_b128)]
  for _, c in grid:
    c.train.budget_minutes = BUDGET_MINUTES
  return grid


def get_config():
  return get_grid()[0][1]
