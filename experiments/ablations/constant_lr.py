"""Ablation of experiments/classic.py: a constant learning rate instead of the one-cycle schedule.

Command: dr-jax sweep experiments/ablations/constant_lr.py --seeds 3
Results: accuracy and time are in docs/ablations.md, measured with the command above next
to `dr-jax sweep experiments/classic.py --seeds 3`.
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parents[1] / "classic.py")
  c.schedule.name = "constant"
  return c
