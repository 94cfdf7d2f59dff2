"""Ablation of experiments/classic.py: label smoothing 0.1 (targets 0.91 / 0.01 for ten classes).

Command: dr-jax sweep experiments/ablations/label_smoothing.py --seeds 3
Results: not measured yet (docs/ablations.md lists what is).
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parents[1] / "classic.py")
  c.train.label_smoothing = 0.1
  return c
