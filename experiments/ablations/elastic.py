"""Ablation of experiments/classic.py: elastic distortion on top of its affine augmentation.

alpha 34 pixels and sigma 4 are Simard et al. (2003)'s MNIST values; the displacement it draws
stays within a pixel or two for these widths (docs/design.md, augmentation).
Command: dr-jax sweep experiments/ablations/elastic.py --seeds 3
Results: not measured yet (docs/ablations.md lists what is).
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parents[1] / "classic.py")
  c.augment.elastic_alpha = 34.0
  c.augment.elastic_sigma = 4.0
  return c
