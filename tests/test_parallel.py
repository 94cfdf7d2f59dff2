"""Data parallelism on 4 simulated CPU devices (each check runs in a fresh process, slow tier)."""

import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from conftest import SMOOTH
from dr_jax import checkpoint

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def _env(cli_env, devices):
  return dict(cli_env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _train(workdir, data_dir, cli_env, devices, *extra):
  cmd = [sys.executable, "-m", "dr_jax", "train", "--config", str(EXPERIMENTS / "tiny.py"),
         "--workdir", str(workdir), "--data-dir", str(data_dir), *SMOOTH, *extra]
  return subprocess.run(cmd, env=_env(cli_env, devices), capture_output=True, text=True,
                        timeout=300)


@pytest.fixture(scope="module")
def data_dir(kaggle_dir):
  return kaggle_dir(n_train=200, n_test=10)


@pytest.mark.slow
def test_four_devices_train_like_one(tmp_path, data_dir, cli_env):
  """Same parameters after an epoch on 4 devices as on 1, to float32 summation tolerance."""
  runs = {}
  for devices in (1, 4):
    proc = _train(tmp_path / f"d{devices}", data_dir, cli_env, devices)
    assert proc.returncode == 0, proc.stderr
    assert f"{devices} device{'s' if devices > 1 else ''} (cpu)" in proc.stderr
    with checkpoint.Checkpoints(tmp_path / f"d{devices}", read_only=True) as ckpts:
      runs[devices] = ckpts.restore("latest")[0]["params"]
  flat1 = {k: np.asarray(v) for k, v in flatten_dict(runs[1], sep="/").items()}
  flat4 = {k: np.asarray(v) for k, v in flatten_dict(runs[4], sep="/").items()}
  assert flat1.keys() == flat4.keys()
  for key in flat1:
    np.testing.assert_allclose(flat4[key], flat1[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_batch_is_sharded_across_devices(cli_env):
  script = textwrap.dedent("""
      import json, jax, jax.numpy as jnp
      from dr_jax import parallel, train
      mesh = parallel.data_mesh(32)
      make = jax.jit(jax.vmap(lambda k, i: train.epoch_batches(k, i, 4, 32)),
                     out_shardings=(parallel.batch_sharded(mesh), parallel.replicated(mesh)))
      idx, keys = make(jax.random.split(jax.random.key(0), 1), jnp.arange(200)[None])
      shards = [s.data.shape for s in idx.addressable_shards]
      print(json.dumps({"spec": str(idx.sharding.spec), "shards": shards,
                        "devices": len(idx.sharding.device_set)}))
  """)
  proc = subprocess.run([sys.executable, "-c", script], env=_env(cli_env, 4),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  assert info["devices"] == 4 and "data" in info["spec"]
  assert info["shards"] == [[1, 4, 8]] * 4


@pytest.mark.slow
def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path, data_dir, cli_env):
  proc = _train(tmp_path / "bad", data_dir, cli_env, 3)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert "batch_size=32 does not divide across 3 devices" in proc.stderr
  assert "--config.batch_size=30" in proc.stderr
  assert not (tmp_path / "bad").exists()
