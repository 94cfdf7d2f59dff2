"""Ablation of experiments/classic.py: Adam instead of RMSprop, same learning rate and schedule.

Command: dr-jax sweep experiments/ablations/adam.py --seeds 3
Results: accuracy and time are in docs/ablations.md, measured with the command above next
to `dr-jax sweep experiments/classic.py --seeds 3`.
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parents[1] / "classic.py")
  c.optimizer.name = "adam"
  return c
