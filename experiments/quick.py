"""Fast iteration: the residual CNN under default.py's recipe, as many epochs as fit 5 minutes.

train.budget_minutes = 5 sizes the one-cycle schedule to this machine (budget.py): the run
measures its step rate after compiling and trains the most epochs that end within 5 minutes of
the start of `train`, so it is a 5-minute run on any machine; the count goes into config.json.
The residual CNN because at 5 minutes it is ahead on validation of the strided CNN, which
fits fewer epochs, and neither dropout off nor batches of 128 at 2e-3 is better:
experiments/ablations/grid_quick.py, 2 seeds each (docs/results.md, "Quick runs"), best
validation accuracy 0.9958 against 0.9923, 0.9956 and 0.9951.
Command: dr-jax run --config experiments/quick.py
Measured (CPU-2s of docs/results.md: a 2-core AMD EPYC, jax 0.10.2): 8 epochs fit,
validation 0.9952 and 0.9964, local test accuracy 0.99404 and 0.99418 (seeds 0 and 1); 4.7 and
4.8 min of training, predicting and scoring.
"""

from dr_jax.config import load_config


def get_config():
  c = load_config("residual")
  c.train.budget_minutes = 5.0
  c.num_epochs = 8  # What the budget gave on that machine: the run with the budget set to 0.
  return c
