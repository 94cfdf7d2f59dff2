"""Tests of dr_jax.checkpoint (damaged checkpoints are covered by the CLI tests)."""

import numpy as np

from dr_jax import checkpoint


def test_save_then_restore_round_trips(tmp_path):
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  meta = {"epoch": 3, "norm": [0.0, 1.0]}
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save("best", 3, tree, meta)
    ckpts.wait()
  with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
    assert ckpts.latest_epoch("best") == 3
    assert ckpts.latest_epoch("latest") is None
    restored, restored_meta = ckpts.restore("best", target=tree)
  np.testing.assert_array_equal(restored["w"], tree["w"])
  assert restored_meta["epoch"] == 3
