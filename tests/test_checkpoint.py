"""Tests of dr_jax.checkpoint: saves survive Ctrl-C, restores refuse damaged checkpoints."""

import os
import signal
import threading

import numpy as np
import pytest

from dr_jax import checkpoint


def test_ctrl_c_during_a_save_is_raised_after_the_save():
  done = []
  with pytest.raises(KeyboardInterrupt):
    with checkpoint.uninterrupted():
      os.kill(os.getpid(), signal.SIGINT)
      done.append("rest of the block ran")
  assert done == ["rest of the block ran"]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_uninterrupted_block_without_ctrl_c_raises_nothing():
  with checkpoint.uninterrupted():
    pass
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_uninterrupted_works_off_the_main_thread():
  errors = []

  def body():
    try:
      with checkpoint.uninterrupted():
        pass
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  t = threading.Thread(target=body)
  t.start()
  t.join()
  assert not errors


def test_save_then_restore_round_trips(tmp_path):
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  meta = {"epoch": 3, "norm": [0.0, 1.0]}
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    with checkpoint.uninterrupted():
      ckpts.save("best", 3, tree, meta)
      ckpts.wait()
  with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
    assert ckpts.latest_epoch("best") == 3
    assert ckpts.latest_epoch("latest") is None
    restored, restored_meta = ckpts.restore("best", target=tree)
  np.testing.assert_array_equal(restored["w"], tree["w"])
  assert restored_meta["epoch"] == 3
