"""The best ensemble that trains in about an hour on a 2-core CPU: 6 strided CNNs, one program.

A delta on default.py (the strided CNN, one-cycle learning rate, 10% validation): six
members, each with its own initialisation, dropout/augmentation keys and its own stratified
10% validation split (as in the 15-CNN recipe, so each sees a different 90% of the data and
picks its best epoch on its own 4,200 images); 22 epochs each.
Why 6 × 22 rather than 5 × 26 (the same budget of member-epochs): in a 5 × 26 run the members'
mean validation accuracy stopped rising at epoch 22 (0.99590; 0.99576 at epoch 26), so the last
four epochs buy nothing a sixth member cannot.
Command: dr-jax train --config experiments/ensemble_cpu.py --workdir runs/ensemble_cpu
         dr-jax predict --workdir runs/ensemble_cpu && dr-jax score runs/ensemble_cpu/submission.csv
Measured (2-core AMD EPYC, embedded data, one run per seed): local test accuracy 0.99575 (119
wrong; mean softmax of the 6 members' best-validation checkpoints) and 0.99593 with --tta 5; 55.1
min of training (epochs of ~141 s at ~1,610 member-images/s, compile 45 s); predict with 5
views 1 min 47 s.
Second seed (--config.seed=1): 0.99618 (107 wrong; --tta 5: 0.99625), 52.5 min of training.
5 × 26 (--config.ensemble.size=5 --config.num_epochs=26) scored 0.99618 (--tta 5: 0.99646) in
49.5 min. The 99.65% asked of this config is not reached. Adding pseudo-labelled test images
within the same hour (ensemble_cpu_pseudo.py) lost on validation: 98 errors against 86 on the
same splits.
On a slower 2-core AVX-512 EPYC (docs/results.md's CPU-2s) the members train at 847 images/s and
the 22 epochs take about 98 min; --config.model.kwargs.widths='(24,48,96)' --budget 57 fits the
hour there with 17 epochs, but lost on validation (110 member errors against 86; test 0.99514).
"""

import pathlib

from dr_jax.config import load_config


def get_config():
  c = load_config(pathlib.Path(__file__).resolve().parent / "default.py")
  c.num_epochs = 22
  c.train.max_minutes = 0.0  # Measured at these epochs; default.py caps its time.
  c.ensemble.size = 6
  c.ensemble.own_split = True
  c.train.label_smoothing = 0.0  # Measured without default.py's; with it: not measured.
  c.model.kwargs.widths = (32, 64, 128)  # Measured at these; default.py's are narrower.
  return c
