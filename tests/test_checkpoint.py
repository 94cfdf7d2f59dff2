"""Tests of dr_jax.checkpoint (damaged checkpoints are covered by the CLI tests)."""

import logging
import pathlib
import time
from typing import NamedTuple

import jax
import numpy as np
import pytest

from dr_jax import checkpoint, optim
from dr_jax.errors import UserError
from dr_jax.run_state import RunState


def _run(epoch: int, best_epoch: int, best_accuracy: float) -> RunState:
  return RunState(epoch, (optim.PlateauState(1e-3),), (best_epoch,), (best_accuracy,), (0.1,),
                  (0.0, 255.0))


def _tree(value: float) -> dict:
  return {"w": np.full((2, 3), value, np.float32)}


def test_save_then_restore_round_trips(tmp_path):
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  run = _run(3, 3, 0.9)
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save("best", tree, run)
  with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
    assert ckpts.latest_epoch("best") == 3
    assert ckpts.latest_epoch("latest") is None
    restored, restored_run = ckpts.restore("best", target=tree)
  np.testing.assert_array_equal(restored["w"], tree["w"])
  assert restored_run == run


def test_a_new_run_has_nothing_to_resume(tmp_path):
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    assert ckpts.resume(_tree(0), _tree(0)) is None


def test_save_epoch_writes_best_only_when_given_and_latest_always(tmp_path):
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save_epoch(_tree(1), _tree(1), _run(1, 1, 0.5))
    ckpts.save_epoch(_tree(2), None, _run(2, 1, 0.5))  # No member improved.
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    assert (ckpts.latest_epoch("best"), ckpts.latest_epoch("latest")) == (1, 2)
    state, best, run = ckpts.resume(_tree(0), _tree(0))
  assert (state["w"][0, 0], best["w"][0, 0], run.epoch, run.best_epoch) == (2, 1, 2, 1)


def test_resume_keeps_a_best_saved_after_the_latest(tmp_path):
  """Killed between an epoch's best save and its latest save: that best is not lost."""
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save_epoch(_tree(1), _tree(1), _run(1, 1, 0.5))
    ckpts.save("best", _tree(2), _run(2, 2, 0.8))  # Epoch 2's best landed; its latest did not.
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    state, best, run = ckpts.resume(_tree(0), _tree(0))
  assert state["w"][0, 0] == 1 and best["w"][0, 0] == 2
  assert run.epoch == 1  # Epoch 2 is trained again,
  # but against epoch 2's best, so a worse rerun cannot overwrite it.
  assert (run.member_best_epoch, run.member_best_val_accuracy) == ((2,), (0.8,))


def test_saving_an_epoch_again_replaces_it(tmp_path):
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save("latest", _tree(1), _run(1, 1, 0.5))
    ckpts.wait()
    ckpts.save("latest", _tree(5), _run(1, 1, 0.5))
  with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
    state, _ = ckpts.restore("latest", target=_tree(0))
  assert state["w"][0, 0] == 5


def test_restore_without_a_checkpoint_says_train_first(tmp_path):
  with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
    with pytest.raises(Exception, match="no best checkpoint .* train first"):
      ckpts.restore("best")


@pytest.mark.parametrize("link", ["checkpoints", "checkpoints/latest", "checkpoints/best"])
def test_a_linked_checkpoint_directory_is_refused_and_its_target_untouched(tmp_path, link):
  target = tmp_path / "elsewhere"
  (target / "7").mkdir(parents=True)
  (tmp_path / "run" / link).parent.mkdir(parents=True, exist_ok=True)
  (tmp_path / "run" / link).symlink_to(target, target_is_directory=True)
  with pytest.raises(UserError) as e:
    checkpoint.Checkpoints(tmp_path / "run")
  assert str(e.value) == (
      f"{(tmp_path / 'run' / link).absolute()}: is a symbolic link; dr_jax writes checkpoints "
      "only into real directories (its cleanup would delete inside the link's target): replace "
      "it with a directory, or pass another --workdir")
  assert [p.name for p in target.iterdir()] == ["7"]
  with checkpoint.Checkpoints(tmp_path / "run", read_only=True) as ckpts:  # Reading is safe.
    assert ckpts.latest_epoch("best") in (None, 7)


def test_an_unwritable_checkpoint_directory_is_refused(tmp_path, monkeypatch):
  root = tmp_path / "checkpoints"
  (root / "best").mkdir(parents=True)
  asked = []
  # Permission bits do not stop root; the check asks the OS (os.access), so ask it that way.
  monkeypatch.setattr(checkpoint.os, "access",
                      lambda path, mode: asked.append(mode) or pathlib.Path(path) != root)
  with pytest.raises(UserError) as e:
    checkpoint.Checkpoints(tmp_path)
  assert str(e.value) == (f"{root}: not writable, so checkpoints cannot be saved under {root}; "
                          "fix its permissions or pass another --workdir")
  assert set(asked) == {checkpoint.os.W_OK | checkpoint.os.X_OK}
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  monkeypatch.setattr(checkpoint.os, "access", lambda path, mode: pathlib.Path(path) != fresh)
  with pytest.raises(UserError, match=rf"^{fresh}: not writable"):
    checkpoint.Checkpoints(fresh)


class _Moments(NamedTuple):
  """A state node that is no dict, as optax's are."""

  mu: np.ndarray
  count: np.ndarray


def test_resume_restores_the_types_of_the_state_it_is_given(tmp_path):
  state = {"opt": _Moments(np.ones(3, np.float32), np.array(4, np.int32)), "w": _tree(1)["w"]}
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save_epoch(state, {"w": _tree(2)["w"]}, _run(1, 1, 0.5))
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    restored, best, _ = ckpts.resume(state, {"w": _tree(0)["w"]})
  assert isinstance(restored["opt"], _Moments) and int(restored["opt"].count) == 4
  assert restored["opt"].count.dtype == np.int32 and best["w"][0, 0] == 2
  # The best variables follow their target too: numpy here, as the state (replicated jax arrays
  # in training); restored without it they would come back as jax arrays on one device.
  assert type(best["w"]) is type(state["w"]) and best["w"].dtype == state["w"].dtype


def test_restore_without_a_target_rebuilds_arrays_on_the_first_device(tmp_path):
  tree = {"a": np.arange(6, dtype=np.int32).reshape(3, 2), "b": {"c": np.full(4, 0.5, np.float32)}}
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save("best", tree, _run(2, 2, 0.7))
  with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
    restored, run = ckpts.restore("best")
  assert run.epoch == 2
  for got, want in ((restored["a"], tree["a"]), (restored["b"]["c"], tree["b"]["c"])):
    assert isinstance(got, jax.Array) and got.dtype == want.dtype
    assert got.sharding == jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    np.testing.assert_array_equal(got, want)


def test_only_the_newest_checkpoint_of_each_kind_stays_on_disk(tmp_path):
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    for epoch in (1, 2, 3):
      ckpts.save_epoch(_tree(epoch), _tree(epoch), _run(epoch, epoch, 0.5))
      ckpts.wait()
  for kind in checkpoint.KINDS:
    assert sorted(p.name for p in (tmp_path / "checkpoints" / kind).iterdir()) == ["3"]


def test_a_reader_creates_and_cleans_nothing_a_trainer_cleans_its_temp_directories(tmp_path):
  with checkpoint.Checkpoints(tmp_path / "empty", read_only=True) as ckpts:
    assert ckpts.latest_epoch("best") is None
  assert not (tmp_path / "empty").exists()
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save("best", _tree(1), _run(1, 1, 0.5))
  left = tmp_path / "checkpoints" / "best" / "2.orbax-checkpoint-tmp-1234"  # A killed save's.
  left.mkdir()
  with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
    assert ckpts.latest_epoch("best") == 1
  assert left.is_dir()
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    assert ckpts.latest_epoch("best") == 1
  # orbax deletes it in a background thread: poll (a bound, not a speed requirement).
  for _ in range(300):
    if not left.exists():
      break
    time.sleep(0.1)
  assert not left.exists()


def test_restore_messages_word_for_word(tmp_path, monkeypatch):
  with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
    with pytest.raises(UserError) as e:
      ckpts.restore("latest")
  root = (tmp_path / "checkpoints").absolute()
  assert str(e.value) == (f"no latest checkpoint in {root / 'latest'}; train first with "
                          f"`dr-jax train --config FILE --workdir {root.parent}`")
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save("best", _tree(1), _run(4, 4, 0.5))
  where = root / "best" / "4"
  for raised, shown in ((ValueError("bad bytes\nmore"), "ValueError: bad bytes"),
                        (OSError(), "OSError: OSError"),
                        (KeyError("k" * 200), "KeyError: '" + "k" * 156 + "..."),
                        (ValueError("v" * 160), "ValueError: " + "v" * 160),  # Whole up to 160.
                        (ValueError("v" * 161), "ValueError: " + "v" * 157 + "...")):
    def fail(manager, epoch, target, raised=raised):
      raise raised
    monkeypatch.setattr(checkpoint.Checkpoints, "_quiet_restore", staticmethod(fail))
    with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
      with pytest.raises(UserError) as e:
        ckpts.restore("best")
    assert str(e.value) == (f"{where}: checkpoint cannot be read ({shown}); it is damaged or "
                            "from another model: delete it, or retrain")


def test_a_damaged_checkpoint_is_one_error_and_nothing_on_stderr(tmp_path, capfd):
  with checkpoint.Checkpoints(tmp_path) as ckpts:
    ckpts.save("best", _tree(1), _run(1, 1, 0.5))
  for data in (tmp_path / "checkpoints" / "best" / "1").rglob("*"):
    if data.is_file() and "d" in data.parent.name and data.stat().st_size > 0:
      data.write_bytes(b"\0" * data.stat().st_size)  # The arrays' bytes.
  capfd.readouterr()
  with checkpoint.Checkpoints(tmp_path, read_only=True) as ckpts:
    with pytest.raises(UserError, match="checkpoint cannot be read"):
      ckpts.restore("best", target=_tree(0))
  assert capfd.readouterr().err == ""


class _FailingManager:
  """Stands in for an orbax manager whose restore fails, recording what is done to it."""

  closed = False

  def restore(self, epoch, args):
    raise ValueError("damaged")

  def close(self):
    self.closed = True


def test_a_failed_restore_closes_waits_and_quiets_asyncio_then_reraises(monkeypatch):
  slept = []
  monkeypatch.setattr(checkpoint.time, "sleep", slept.append)
  asyncio_logger = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_logger, "level", logging.NOTSET)
  manager = _FailingManager()
  with pytest.raises(ValueError, match="^damaged$"):
    checkpoint.Checkpoints._quiet_restore(manager, 3, _tree(0))
  # Closed, then one second for the reads in flight, then asyncio's logger quiet.
  assert manager.closed and slept == [1.0]
  assert asyncio_logger.level == logging.CRITICAL
