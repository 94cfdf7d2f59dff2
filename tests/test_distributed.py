"""Tests of dr_jax.distributed: launch settings, and a real two-process `jax.distributed` run."""

import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from conftest import SMOOTH
from dr_jax import checkpoint, distributed
from dr_jax.errors import UserError

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
ENV = {"JAX_COORDINATOR_ADDRESS": "localhost:12355", "JAX_NUM_PROCESSES": "2",
       "JAX_PROCESS_ID": "1"}


def test_no_settings_is_a_single_process():
  launch = distributed.resolve(environ={})
  assert launch == distributed.Launch() and not launch.multi_process


def test_environment_gives_the_launch():
  assert distributed.resolve(environ=ENV) == distributed.Launch("localhost:12355", 2, 1)


def test_flags_win_over_the_environment():
  launch = distributed.resolve("10.0.0.1:999", 4, 3, environ=ENV)
  assert launch == distributed.Launch("10.0.0.1:999", 4, 3)


def test_auto_detection_is_asked_for_by_name():
  launch = distributed.resolve(environ={"DR_JAX_DISTRIBUTED": "auto"})
  assert launch.auto and launch.multi_process


def test_one_process_needs_no_coordinator():
  assert not distributed.resolve(environ={"JAX_NUM_PROCESSES": "1"}).multi_process


@pytest.mark.parametrize("environ,message", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "need JAX_COORDINATOR_ADDRESS"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "h:1"}, "need JAX_PROCESS_ID"),
    (dict(ENV, JAX_PROCESS_ID="2"), "process id 2 is outside 0..1"),
    (dict(ENV, JAX_PROCESS_ID="-1"), "process id -1 is outside 0..1"),
    (dict(ENV, JAX_NUM_PROCESSES="two"), "JAX_NUM_PROCESSES='two' is not an integer"),
    (dict(ENV, JAX_NUM_PROCESSES="0"), "must be at least 1"),
    (dict(ENV, JAX_COORDINATOR_ADDRESS="localhost"), "needs a port"),
    ({"JAX_PROCESS_ID": "1"}, "process id 1 without a process count"),
    ({"DR_JAX_DISTRIBUTED": "yes"}, "use `auto`"),
])
def test_incomplete_or_wrong_settings_are_one_clear_error(environ, message):
  with pytest.raises(UserError, match=message):
    distributed.resolve(environ=environ)


def test_cli_reports_missing_coordinator_without_traceback(cli_main, tmp_path):
  code, _, err = cli_main("train", "--config", EXPERIMENTS / "tiny.py", "--workdir",
                          tmp_path / "w", "--num-processes", "2", "--process-id", "0")
  assert code == 2 and "Traceback" not in err
  assert "need JAX_COORDINATOR_ADDRESS (--coordinator)" in err
  assert not (tmp_path / "w").exists()


def test_one_process_agrees_with_itself():
  assert distributed.fail_together(lambda: 5) == 5
  with pytest.raises(UserError, match="^bad file$"):
    distributed.fail_together(lambda: (_ for _ in ()).throw(UserError("bad file")))
  distributed.check_same("data", "abc")
  assert distributed.any_process(True) and not distributed.any_process(False)
  assert distributed.gather_text("héllo") == ["héllo"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(command, cli_env, processes, devices_per_process=1):
  """Starts `dr-jax COMMAND...` in each of `processes` processes; returns their outputs."""
  env = dict(cli_env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  if processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}",
               JAX_NUM_PROCESSES=str(processes))
  procs = [subprocess.Popen([sys.executable, "-m", "dr_jax", *map(str, command)],
                            env=dict(env, JAX_PROCESS_ID=str(i)) if processes > 1 else env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(processes)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err
  return outputs


@pytest.mark.slow
def test_two_processes_train_one_epoch_and_write_one_submission(tmp_path, data_dir, cli_env):
  """Two `jax.distributed` processes (one CPU device each) vs one process with two devices."""
  runs = {}
  for processes, devices in ((2, 1), (1, 2)):
    workdir = tmp_path / f"p{processes}"
    train = _launch(["train", "--config", EXPERIMENTS / "tiny.py", "--workdir", workdir,
                     "--data-dir", data_dir, *SMOOTH], cli_env, processes, devices)
    predict = _launch(["predict", "--workdir", workdir, "--data-dir", data_dir], cli_env,
                      processes, devices)
    with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
      assert ckpts.latest_epoch("latest") == ckpts.latest_epoch("best") == 1
      runs[processes] = ckpts.restore("best")[0]["params"]
    runs[processes, "submission"] = (workdir / "submission.csv").read_text()
    if processes == 2:
      (_, err0), (_, err1) = train
      assert "2 devices (cpu) over 2 processes" in err0
      # Only process 0 logs and writes the per-run files.
      assert "epoch 1/1" in err0 and "epoch 1/1" not in err1
      assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 1
      assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1
      assert str(workdir / "submission.csv") in predict[0][0]
      assert str(workdir / "submission.csv") not in predict[1][0]
  assert runs[1, "submission"] == runs[2, "submission"]
  lines = runs[2, "submission"].splitlines()
  assert lines[0] == "ImageId,Label" and len(lines) == 1 + 20
  flat = lambda tree: {k: np.asarray(v) for k, v in flatten_dict(tree, sep="/").items()}
  one, two = flat(runs[1]), flat(runs[2])
  assert one.keys() == two.keys()
  # Same global batches and the same two-device all-reduce: equal up to float summation order.
  for key in one:
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _start(commands, cli_env):
  """Starts one `dr-jax` process per command, as the processes of one distributed run."""
  env = dict(cli_env, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}",
             JAX_NUM_PROCESSES=str(len(commands)))
  return [subprocess.Popen([sys.executable, "-m", "dr_jax", *map(str, command)],
                           env=dict(env, JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
          for i, command in enumerate(commands)]


@pytest.mark.slow
def test_a_data_error_on_one_process_ends_every_process(tmp_path, data_dir, cli_env, kaggle_dir):
  train = ["train", "--config", EXPERIMENTS / "tiny.py", "--workdir", tmp_path / "w", *SMOOTH]
  empty = tmp_path / "empty"
  empty.mkdir()
  # Process 1 has no train.csv; then it has a train.csv with other digits.
  for other, message in ((empty, f"{empty / 'train.csv'}: file not found"),
                         (kaggle_dir(n_train=300, n_test=20, seed=1),
                          "the processes' training data (sha256 of train.csv's "
                                      "digits) differ (process 0: ")):
    procs = _start([train + ["--data-dir", data_dir], train + ["--data-dir", other]], cli_env)
    (_, err0), (_, err1) = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], (err0, err1)
    assert message in err0 and message in err1 and "Traceback" not in err0 + err1
    if other is empty:
      assert f"dr-jax: error: process 1: {empty}" in err0
      assert f"dr-jax: error: {empty}" in err1
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
def test_sigterm_on_one_process_stops_every_process_at_the_same_epoch(tmp_path, data_dir,
                                                                      cli_env):
  workdir = tmp_path / "w"
  train = ["train", "--config", EXPERIMENTS / "tiny.py", "--workdir", workdir, "--data-dir",
           data_dir, *SMOOTH, "--config.num_epochs=200"]
  procs = _start([train, train], cli_env)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        [p.communicate() for p in procs]
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  (_, err0), (_, err1) = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [130, 130], (err0, err1)
  assert "interrupted; the last completed epoch is saved" in err0 + err1
  epochs = len(metrics.read_text().splitlines())
  assert 2 <= epochs < 200  # Stopped mid-run, by the signal, after whole epochs.
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    assert ckpts.latest_epoch("latest") == epochs
