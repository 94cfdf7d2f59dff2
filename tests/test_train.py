"""Tests of dr_jax.train: a one-epoch smoke run, determinism, resume, divergence, bad sizes."""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dr_jax import (build, checkpoint, config, data, files, optim, parallel, predict, run_state,
                    steps, train)
from dr_jax.errors import UserError
from conftest import tiny_config

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"


_cfg = tiny_config


def _params(workdir, kind="latest"):
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    state, run = ckpts.restore(kind)
  return state["params"], run


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# Wall-clock fields differ between any two runs; everything else in a record must not.
TIMINGS = ("epoch_time_s", "images_per_s", "elapsed_s")


def _untimed(records):
  return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("smoke")
  summary = train.train_and_evaluate(_cfg(num_epochs=3), workdir, data_dir)
  return workdir, summary


def test_smoke_run_learns_and_writes_everything(smoke_run, data_dir):
  workdir, summary = smoke_run
  records = _metrics(workdir)
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert records[-1]["train_loss"] < records[0]["train_loss"]
  assert all(math.isfinite(r["val_loss"]) and r["images_per_s"] > 0 for r in records)
  # The run's clock: it covers loading and compiling too, so it leads the epochs' own times.
  elapsed = [r["elapsed_s"] for r in records]
  assert elapsed == sorted(set(elapsed))
  assert elapsed[0] > records[0]["epoch_time_s"]
  assert all(b - a >= r["epoch_time_s"] for a, b, r in zip(elapsed, elapsed[1:], records[1:]))
  best = max(records, key=lambda r: r["val_accuracy"])
  assert summary["best_epoch"] == best["epoch"]
  assert summary["best_val_accuracy"] == pytest.approx(best["val_accuracy"])
  assert (workdir / "checkpoints" / "best" / str(best["epoch"])).is_dir()
  assert (workdir / "checkpoints" / "latest" / "3").is_dir()
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 3
  prov = json.loads((workdir / "provenance.json").read_text())
  assert {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint"} <= set(prov[0]["versions"])
  assert prov[0]["devices"] and prov[0]["git_commit"]
  digits = data.load_csv(data_dir / "train.csv", with_labels=True)
  assert prov[0]["train_data"] == {"path": str((data_dir / "train.csv").resolve()),
                                   "sha256": data.digest(digits)}


def test_predict_writes_where_out_says_and_only_there(smoke_run, data_dir, tmp_path):
  workdir, _ = smoke_run
  default = workdir / "submission.csv"
  had_default = default.exists()
  out, _ = predict.predict(workdir, data_dir, out=tmp_path / "mine.csv")
  assert out == tmp_path / "mine.csv" and out.read_text().startswith("ImageId,Label\n1,")
  assert default.exists() == had_default


def test_best_checkpoint_holds_the_best_epoch(smoke_run):
  workdir, summary = smoke_run
  _, run = _params(workdir, "best")
  assert run.epoch == summary["best_epoch"]
  assert run.member_best_val_accuracy == (pytest.approx(summary["best_val_accuracy"]),)


@pytest.mark.slow
def test_same_seed_same_result_different_seed_different_result(tmp_path, data_dir, smoke_run):
  workdir, _ = smoke_run
  again = tmp_path / "again"
  train.train_and_evaluate(_cfg(num_epochs=3), again, data_dir)
  a, b = _params(workdir)[0], _params(again)[0]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert _untimed(_metrics(workdir)) == _untimed(_metrics(again))
  other = tmp_path / "other"
  train.train_and_evaluate(_cfg(num_epochs=1, seed=1), other, data_dir)
  assert _metrics(other)[0]["train_loss"] != _metrics(workdir)[0]["train_loss"]


def test_resume_continues_bitwise_like_an_uninterrupted_run(tmp_path, data_dir, smoke_run):
  workdir, _ = smoke_run
  resumed = tmp_path / "resumed"
  train.train_and_evaluate(_cfg(num_epochs=1), resumed, data_dir)
  train.train_and_evaluate(_cfg(num_epochs=3), resumed, data_dir)
  for x, y in zip(jax.tree.leaves(_params(workdir)[0]), jax.tree.leaves(_params(resumed)[0])):
    np.testing.assert_array_equal(x, y)
  assert [r["epoch"] for r in _metrics(resumed)] == [1, 2, 3]
  assert _metrics(resumed)[-1]["val_accuracy"] == _metrics(workdir)[-1]["val_accuracy"]


def test_a_parameters_average_is_validated_kept_as_best_and_resumed_bitwise(tmp_path, data_dir):
  ema = {"train.ema_decay": 0.9}
  whole, resumed = tmp_path / "whole", tmp_path / "resumed"
  train.train_and_evaluate(_cfg(num_epochs=2, **ema), whole, data_dir)
  train.train_and_evaluate(_cfg(num_epochs=1, **ema), resumed, data_dir)
  with checkpoint.Checkpoints(resumed, read_only=True) as ckpts:
    first, _ = ckpts.restore("latest")
    best, best_run = ckpts.restore("best")
  # Epoch 1 is always the best so far: the best checkpoint holds that epoch's average.
  assert best_run.epoch == 1
  jax.tree.map(np.testing.assert_array_equal, best["params"], first["ema_params"])
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, first["params"],
                                              first["ema_params"])))
  train.train_and_evaluate(_cfg(num_epochs=2, **ema), resumed, data_dir)
  with checkpoint.Checkpoints(whole, read_only=True) as ckpts:
    latest, _ = ckpts.restore("latest")
  with checkpoint.Checkpoints(resumed, read_only=True) as ckpts:
    again, _ = ckpts.restore("latest")
  for key in ("params", "ema_params"):
    jax.tree.map(np.testing.assert_array_equal, latest[key], again[key])
  assert _metrics(resumed)[-1]["val_accuracy"] == _metrics(whole)[-1]["val_accuracy"]



def test_a_final_fit_trains_on_every_row_and_keeps_its_last_epoch(tmp_path, data_dir, capsys):
  cfg = _cfg(num_epochs=3, **{"train.final_fit": True, "schedule.name": "cosine"})
  summary = train.train_and_evaluate(cfg, tmp_path, data_dir)
  log = capsys.readouterr().err
  assert ("train.final_fit: training on all 300 labelled rows and keeping the last epoch; the 30 "
          "validation images are among them, so validation accuracy is not held out") in log
  assert f"300 train / 30 val images; {300 // 32} steps of 32 per epoch" in log
  records = _metrics(tmp_path)
  assert (summary["final_fit"], summary["best_epoch"], summary["epochs"]) == (True, 3, 3)
  assert summary["best_val_accuracy"] == pytest.approx(records[-1]["val_accuracy"])
  assert all(r["best_epoch"] == r["epoch"] for r in records)
  (best, best_run), (latest, _) = _params(tmp_path, "best"), _params(tmp_path, "latest")
  assert best_run.epoch == 3
  jax.tree.map(np.testing.assert_array_equal, best, latest)

def test_the_log_says_once_when_validation_first_reaches_the_target(tmp_path, data_dir, capsys):
  train.train_and_evaluate(_cfg(num_epochs=1, **{"train.target_accuracy": 0.01}), tmp_path,
                           data_dir)
  first = capsys.readouterr().err
  minutes = _metrics(tmp_path)[0]["elapsed_s"] / 60
  assert (f"validation accuracy first reached 0.0100 (train.target_accuracy) at epoch 1, "
          f"{minutes:.1f} min into the run\n") in first
  # Resumed for a second epoch: the target was reached before, so the log does not repeat it.
  train.train_and_evaluate(_cfg(num_epochs=2, **{"train.target_accuracy": 0.01}), tmp_path,
                           data_dir)
  second = capsys.readouterr().err
  assert "resuming" in second and "epoch 2/2" in second
  assert "first reached" not in second
  assert _metrics(tmp_path)[1]["elapsed_s"] > _metrics(tmp_path)[0]["elapsed_s"]


def test_finished_run_is_not_retrained(smoke_run, data_dir, capsys):
  workdir, _ = smoke_run
  before = (workdir / "metrics.jsonl").read_text()
  # A killed write's temp file is cleaned up; one young enough to be in progress is not.
  stale, fresh = workdir / ".config.json.x1.tmp", workdir / ".report.md.x2.tmp"
  stale.write_text("{")
  fresh.write_text("#")
  os.utime(stale, (time.time() - files.STALE_AFTER_S - 1,) * 2)
  train.train_and_evaluate(_cfg(num_epochs=3), workdir, data_dir)
  assert (workdir / "metrics.jsonl").read_text() == before
  assert not stale.exists() and fresh.exists()
  assert f"removed {stale}: a temp file that a killed write left" in capsys.readouterr().err
  fresh.unlink()


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoints(tmp_path, data_dir, monkeypatch):
  workdir = tmp_path / "nan"
  train.train_and_evaluate(_cfg(num_epochs=1), workdir, data_dir)
  original = steps.train_step

  def poisoned(state, images, targets, key, pre):
    state, metrics = original(state, images, targets, key, pre)
    return state, dict(metrics, loss=metrics["loss"] * np.nan)

  monkeypatch.setattr(steps, "train_step", poisoned)
  with pytest.raises(train.TrainingDiverged, match=r"epoch 2 step \d+"):
    train.train_and_evaluate(_cfg(num_epochs=2), workdir, data_dir)
  assert _params(workdir)[1].epoch == 1


def test_batch_larger_than_training_set_is_a_user_error(tmp_path, data_dir):
  with pytest.raises(UserError, match="batch_size"):
    train.train_and_evaluate(_cfg(batch_size=1000), tmp_path / "big", data_dir)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["constant", "cosine", "exponential", "onecycle"])
def test_every_schedule_trains(tmp_path, data_dir, schedule):
  workdir = tmp_path / schedule
  train.train_and_evaluate(_cfg(num_epochs=1, **{"schedule.name": schedule}), workdir, data_dir)
  assert math.isfinite(_metrics(workdir)[0]["train_loss"])


_CLI_OVERRIDES = ["--config.model.kwargs.widths=(8, 16)", "--config.model.kwargs.dense=32",
                  "--config.data.val_fraction=0.1", "--config.batch_size=16",
                  "--config.train.steps_per_call=2"]


# `python -m dr_jax` with Python's Ctrl-C handler even if this process ignores SIGINT (children
# inherit that, as background jobs do); `preexec_fn` would fork a multithreaded JAX process.
_MAIN_WITH_CTRL_C = ("import runpy, signal; "
                     "signal.signal(signal.SIGINT, signal.default_int_handler); "
                     "runpy.run_module('dr_jax', run_name='__main__')")


def _start(workdir, data_dir, cli_env, epochs):
  """Starts `dr-jax train` in a subprocess on the tiny config."""
  cmd = [sys.executable, "-c", _MAIN_WITH_CTRL_C, "train", "--config", str(EXPERIMENTS / "tiny.py"),
         "--workdir", str(workdir), "--data-dir", str(data_dir),
         f"--config.num_epochs={epochs}", *_CLI_OVERRIDES]
  return subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _latest_epoch(workdir):
  """The newest epoch saved in `workdir`'s latest checkpoints, 0 before the first. Orbax keeps one
  (`latest/3` replaces `latest/2`) and saves under a temporary name, renamed when complete."""
  folder = workdir / "checkpoints" / "latest"
  names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
  return max((int(name) for name in names if name.isdigit()), default=0)


def _wait_for(workdir, epoch, proc, timeout=240):
  """Polls until the run in `workdir` (process `proc`) has saved epoch `epoch` or a later one."""
  deadline = time.monotonic() + timeout
  while _latest_epoch(workdir) < epoch:
    if proc.poll() is not None:
      pytest.fail(f"the run exited ({proc.returncode}) before epoch {epoch}: {proc.communicate()}")
    if time.monotonic() > deadline:
      pytest.fail(f"no checkpoint of epoch {epoch} in {workdir} after {timeout} s")
    time.sleep(0.05)


@pytest.mark.slow
def test_resume_refuses_other_training_data_and_changes_nothing(tmp_path, kaggle_dir, smoke_run):
  workdir, _ = smoke_run
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  other = kaggle_dir(n_train=300, n_test=20, seed=1)
  with pytest.raises(UserError) as info:
    train.train_and_evaluate(_cfg(num_epochs=4), workdir, other)
  message = str(info.value)
  assert "\n" not in message and str(other / "train.csv") in message
  assert "pass --data-dir with the run's train.csv" in message
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path, data_dir, cli_env):
  """Kill -9 after epoch 2's checkpoint, restart: final parameters are bitwise identical."""
  epochs = 8  # A tiny epoch takes a fraction of a second: leave the kill time to land mid-run.
  straight = _start(tmp_path / "straight", data_dir, cli_env, epochs=epochs)
  _, err = straight.communicate(timeout=300)
  assert straight.returncode == 0, err
  killed_dir = tmp_path / "killed"
  proc = _start(killed_dir, data_dir, cli_env, epochs=epochs)
  _wait_for(killed_dir, 2, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  # The kill landed mid-run, so the restart below resumes instead of finding a finished run.
  killed_at = _latest_epoch(killed_dir)
  assert 2 <= killed_at < epochs, f"the run saved epoch {killed_at} of {epochs} before the kill"
  resumed = _start(killed_dir, data_dir, cli_env, epochs=epochs)
  out, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err
  assert f"resuming {killed_dir} after epoch {killed_at} " in err, err
  for x, y in zip(jax.tree.leaves(_params(tmp_path / "straight")[0]),
                  jax.tree.leaves(_params(killed_dir)[0])):
    np.testing.assert_array_equal(x, y)
  assert _untimed(_metrics(killed_dir)) == _untimed(_metrics(tmp_path / "straight"))
  assert _params(killed_dir, "best")[1].epoch == _params(tmp_path / "straight", "best")[1].epoch


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_after_saving(tmp_path, data_dir, cli_env):
  workdir = tmp_path / "interrupted"
  proc = _start(workdir, data_dir, cli_env, epochs=50)
  _wait_for(workdir, 1, proc)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert "interrupted" in err and "Traceback" not in err
  _, run = _params(workdir)
  assert run.epoch >= 1
  assert len(_metrics(workdir)) >= run.epoch


def test_early_stop_ends_the_run_and_a_resume_keeps_it_stopped(tmp_path, data_dir, monkeypatch,
                                                                capsys):
  # Only the first epoch counts as an improvement, so patience 2 stops after epoch 3 of 6.
  monkeypatch.setattr(run_state, "is_better", lambda acc, loss, best_acc, best_loss: best_acc < 0)
  cfg = _cfg(num_epochs=6, **{"train.early_stop": 2})
  summary = train.train_and_evaluate(cfg, tmp_path / "run", data_dir)
  assert (summary["epochs"], summary["best_epoch"], summary["stopped_early"]) == (3, 1, True)
  assert [r["epoch"] for r in _metrics(tmp_path / "run")] == [1, 2, 3]
  assert "stopping after epoch 3: no member's validation accuracy improved since epoch 1" in \
      capsys.readouterr().err
  before = (tmp_path / "run" / "metrics.jsonl").read_text()
  again = train.train_and_evaluate(cfg, tmp_path / "run", data_dir)
  assert (again["epochs"], again["stopped_early"]) == (3, True)
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


@pytest.mark.slow
@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_ensemble_equals_members_trained_alone(vectorize):
  """K=3 members in one program (vmapped or looped) = each member trained alone, same keys."""
  cfg = _cfg(**{"ensemble.size": 3, "batch_size": 8, "ensemble.vectorize": vectorize})
  tx = optim.make_optimizer(cfg, 10)
  stacked = train.init_state(cfg, tx, jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8))
  targets = jnp.asarray(data.one_hot(rng.integers(0, 10, 64), 10))
  idx = jnp.asarray(rng.integers(0, 64, (3, 2, 8)), jnp.int32)
  keys = jax.random.split(jax.random.key(1), (3, 2))
  pre = build.preprocess(cfg, 0.0, 255.0, train=True)
  mesh = parallel.data_mesh(8)
  fused = train.compile_train_steps(cfg, stacked, images, targets, parallel.batch_sharded(mesh),
                                    pre, {2})[2]
  together, metrics = fused(jax.tree.map(jnp.copy, stacked), idx, keys)
  assert metrics["loss"].shape == (3,)
  single = config.apply_overrides(cfg, ["ensemble.size=1"])
  alone_fn = train.compile_train_steps(single, jax.tree.map(lambda x: x[:1], stacked), images,
                                       targets, parallel.batch_sharded(mesh), pre, {2})[2]
  for m in range(3):
    alone, _ = alone_fn(jax.tree.map(lambda x: x[m:m + 1], stacked), idx[m:m + 1], keys[m:m + 1])
    for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(together.params)):
      np.testing.assert_allclose(a[0], b[m], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_vmap_and_loop_initialise_the_same_members():
  cfg = _cfg(**{"ensemble.size": 2})
  init = lambda v: train.init_state(config.apply_overrides(cfg, [f"ensemble.vectorize={v}"]),
                                    optim.make_optimizer(cfg, 1), jax.random.key(0))
  for a, b in zip(jax.tree.leaves(init("vmap").params), jax.tree.leaves(init("loop").params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_members_are_initialised_independently():
  cfg = _cfg(**{"ensemble.size": 2})
  state = train.init_state(cfg, optim.make_optimizer(cfg, 1), jax.random.key(0))
  kernel = state.params["Conv_0"]["kernel"]
  assert kernel.shape[0] == 2 and not np.allclose(kernel[0], kernel[1])


def test_ensemble_run_keeps_each_members_best(tmp_path, data_dir):
  workdir = tmp_path / "ens"
  train.train_and_evaluate(_cfg(**{"ensemble.size": 2, "num_epochs": 2}), workdir, data_dir)
  records = _metrics(workdir)
  assert len(records[-1]["val_accuracy_members"]) == 2 and "val_accuracy_ensemble" in records[-1]
  best, run = _params(workdir, "best")
  assert best["Conv_0"]["kernel"].shape[0] == 2
  assert len(run.member_best_epoch) == 2
  for m in range(2):
    accs = [r["val_accuracy_members"][m] for r in records]
    assert run.member_best_val_accuracy[m] == pytest.approx(max(accs))


def _onecycle(k, peak=1e-3, warmup=4, total=8):
  """Cosine one-cycle at step k: peak/25 up to peak at `warmup`, half cosines, to peak/25/1e4."""
  start, end, pct = (peak / 25, peak, k / warmup) if k < warmup else \
      (peak, peak / 25 / 1e4, (k - warmup) / (total - warmup))
  return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


# metrics.jsonl's lr per epoch for 4 epochs of 2 steps (8 steps): the per-epoch schedules' rate
# for that epoch; the per-step ones' rate at the epoch's last step, 1, 3, 5 and 7 (0-based).
# Validation is scripted at a constant accuracy, so plateau (patience 1) halves after epochs 2, 3.
SCHEDULE_LRS = {
    "plateau": ({"schedule.patience": 1}, [1e-3, 1e-3, 5e-4, 2.5e-4]),
    "constant": ({}, [1e-3] * 4),
    "exponential": ({"schedule.decay": 0.5, "schedule.min_lr": 2e-4},
                    [1e-3, 5e-4, 2.5e-4, 2e-4]),
    # alpha = min_lr / lr = 0.01: lr * (0.01 + 0.99 * (1 + cos(pi * k / 8)) / 2).
    "cosine": ({"schedule.min_lr": 1e-5},
               [1e-3 * (0.01 + 0.99 * (1 + math.cos(math.pi * k / 8)) / 2) for k in (1, 3, 5, 7)]),
    # Warm-up ends at 0.5 * 8 = step 4 (optax's default 0.3 would end it at 2).
    "onecycle": ({"schedule.warmup_fraction": 0.5}, [_onecycle(k) for k in (1, 3, 5, 7)]),
}


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULE_LRS)
def test_each_schedules_rate_per_epoch_is_its_definition(tmp_path, data_dir, monkeypatch,
                                                         schedule):
  overrides, expected = SCHEDULE_LRS[schedule]
  monkeypatch.setattr(train.evaluate, "validation_scores", lambda *args, **kwargs:
                      train.evaluate.Scores(np.array([1.0]), np.array([0.5]), None))
  # 270 training images in batches of 128: 2 steps per epoch.
  cfg = _cfg(num_epochs=4, batch_size=128, **{"schedule.name": schedule, "optimizer.lr": 1e-3},
             **overrides)
  train.train_and_evaluate(cfg, tmp_path, data_dir)
  lrs = [r["lr"] for r in _metrics(tmp_path)]
  assert lrs == pytest.approx(expected, rel=1e-6)
