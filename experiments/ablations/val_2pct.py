"""Ablation of experiments/classic.py: the seed post's 2.5% validation split instead of 10%.

Command: dr-jax sweep experiments/ablations/val_2pct.py --seeds 3
Results: accuracy and time are in docs/ablations.md, measured with the command above next
to `dr-jax sweep experiments/classic.py --seeds 3`.
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parents[1] / "classic.py")
  c.data.val_fraction = 0.025
  return c
