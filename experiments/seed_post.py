"""The blog post's recipe: RMSprop lr 1e-4, 2.5% validation, plateau on val accuracy, 100 epochs.

Command: dr-jax train --config experiments/seed_post.py --workdir runs/seed_post
Expected: the post reports 99.1% validation accuracy. On the 2-core CPU of the README an epoch
takes about the time `dr-jax bench` predicts (41k images / train_images_per_s, ~40 s), so the
full 100 epochs take roughly 70 minutes; not measured end to end here.
"""

from dr_jax.config import get_base_config


def get_config():
  c = get_base_config()
  c.num_epochs = 100
  c.batch_size = 86
  c.data.val_fraction = 0.025
  c.optimizer.lr = 1e-4
  c.schedule.name = "plateau"
  return c
