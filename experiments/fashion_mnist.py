"""A config for clothing in the MNIST-as-CSV format (Kaggle's Fashion-MNIST): default.py plus flips.

Fashion-MNIST's files are `label,pixel1,...,pixel784` for both train and test; dr_jax reads the
names from 1 and the ten classes from train.csv (docs/data.md, "Other datasets").
A left-right flip keeps a garment's class (it never keeps a digit's), so it is on; garments are
photographed upright, so rotation is halved. data.num_classes=10 checks that train.csv has every
class. Drop the `label` column from a labelled test file, or pass it as answers to `dr-jax score`.
Command: dr-jax train --config fashion_mnist --data-dir DIR --workdir runs/fashion_mnist
Not measured: dr_jax has no copy of Fashion-MNIST (its data comes from a PyPI package,
docs/data.md); the tests train this config one step on digits.
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parent / "default.py")
  c.augment.flip = True
  c.augment.rotation = 5.0
  c.data.num_classes = 10
  return c
