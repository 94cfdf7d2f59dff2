"""`dr-jax bench`: throughput of the real jitted train step and predict path on synthetic data."""

from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib
import re
import statistics
import subprocess
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dr_jax import build, data, evaluate, models, optim, parallel, steps, train, xla
from dr_jax.errors import UserError


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls of `fn`, each finished with block_until_ready."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
  """Best fp32 matmul rate on the default device: the machine's practical compute ceiling."""
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  return 2 * size**3 / min(_time(lambda: f(a), repeats)) / 1e9


TRACE_ROWS = 15  # Op kinds `--trace` reports.


def op_times(trace_dir: pathlib.Path, num_steps: int) -> list[tuple[str, float]]:
  """Milliseconds per train step of each kind of XLA op in the newest profile under `trace_dir`.

  A kind is an op's name without its numeric suffix (`transpose_copy_fusion.38` is a
  `transpose_copy_fusion`, `command_buffer_550` a `command_buffer`). Only what the trace times
  counts: XLA:CPU's convolutions run on its Eigen thread pool, and their events cover the
  dispatch alone.
  """
  files = sorted(pathlib.Path(trace_dir).glob("plugins/profile/*/*.trace.json.gz"))
  if not files:
    raise UserError(f"no profile (plugins/profile/*/*.trace.json.gz) under {trace_dir}")
  events = json.loads(gzip.decompress(files[-1].read_bytes()))["traceEvents"]
  totals: dict[str, float] = collections.defaultdict(float)
  for event in events:
    op = event.get("args", {}).get("hlo_op")
    if event.get("ph") == "X" and op:
      totals[re.sub(r"[._]\d+$", "", op)] += event["dur"] / 1e3 / num_steps
  return sorted(totals.items(), key=lambda kv: -kv[1])


def train_rate(cfg: ml_collections.ConfigDict, batch: int, num_steps: int,
               repeats: int, trace: pathlib.Path | None = None) -> dict[str, Any]:
  """Images/s (summed over ensemble members) and FLOPs of `num_steps` real fused train steps.

  With `trace`, one more round of the same calls is profiled into that directory.
  """
  members = cfg.ensemble.size
  k = min(cfg.train.steps_per_call, num_steps)
  calls = max(1, num_steps // k)
  n = max(batch * k, 1024)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8))
  targets = jnp.asarray(data.one_hot(rng.integers(0, 10, n), data.NUM_CLASSES))
  state = train.init_state(cfg, optim.make_optimizer(cfg, calls * k), jax.random.key(0))
  preprocess = build.preprocess(cfg, 0.0, 255.0, train=True)
  mesh = parallel.data_mesh(batch)
  state, images, targets = jax.device_put((state, images, targets), parallel.replicated(mesh))
  by_batch = parallel.batch_sharded(mesh)
  start = time.perf_counter()
  fused = train.compile_train_steps(cfg, state, images, targets, by_batch, preprocess, {k})[k]
  compile_s = time.perf_counter() - start
  idx = jax.device_put(jnp.asarray(rng.integers(0, n, (members, k, batch)), jnp.int32), by_batch)
  keys = jax.random.split(jax.random.key(0), (members, k))
  flops = _flops_per_image(cfg, state, images, targets, preprocess, batch)

  def run():
    nonlocal state
    for _ in range(calls):
      state, metrics = fused(state, idx, keys)
    return metrics

  run()  # Warm-up: first-call allocations and caches.
  times = _time(run, repeats)
  work = calls * k * batch * members
  rate = work / statistics.median(times)
  traced = {}
  if trace is not None:
    with jax.profiler.trace(str(trace)):
      jax.block_until_ready(run())
    traced = {"trace_ms_per_step": dict(op_times(trace, calls * k)[:TRACE_ROWS])}
  return {"train_compile_s": compile_s,
          "train_images_per_s": rate, "train_images_per_s_best": work / min(times),
          "train_mflop_per_image": flops / 1e6, "train_gflops_per_s": rate * flops / 1e9,
          **traced}


def _flops_per_image(cfg, state, images, targets, preprocess, batch: int) -> float:
  """FLOPs of one train step per image (and member), from XLA's cost analysis."""
  members = cfg.ensemble.size
  one = jax.jit(build.member_map(
      lambda s, idx, key: steps.train_steps(s, images, targets, idx, key, preprocess), members,
      (0, 0, 0), cfg.ensemble.vectorize))
  lowered = one.lower(state, jnp.zeros((members, 1, batch), jnp.int32),
                      jax.random.split(jax.random.key(0), (members, 1)))
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # None: this backend has no cost analysis, counted like a missing "flops" entry.
  return float((cost or {}).get("flops", 0.0)) / batch / members


def _params_per_member(cfg: ml_collections.ConfigDict) -> int:
  """Parameters of one member (batch statistics are not parameters), from shapes alone."""
  shapes = jax.eval_shape(lambda key: models.init_variables(build.model(cfg), key),
                          jax.random.key(0))
  return models.count_params(shapes["params"])


def predict_rate(cfg: ml_collections.ConfigDict, n: int, repeats: int) -> dict[str, float]:
  """Images/s of the real predict path (`Predictor.probabilities`) on `n` synthetic images."""
  model = build.model(cfg)
  state = train.init_state(cfg, optim.make_optimizer(cfg, 1), jax.random.key(0))
  predictor = evaluate.Predictor(model.apply, steps.variables(state),
                                 build.preprocess(cfg, 0.0, 255.0, False), cfg.ensemble.size,
                                 cfg.ensemble.vectorize, cfg.train.fast_cpu)
  images = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  first = _time(lambda: predictor.probabilities(images), 1)[0]  # Compiles.
  times = _time(lambda: predictor.probabilities(images), repeats)
  return {"predict_compile_s": max(first - statistics.median(times), 0.0),
          "predict_images_per_s": n / statistics.median(times),
          "predict_seconds": statistics.median(times)}



def run(cfg: ml_collections.ConfigDict, batch: int | None = None, num_steps: int = 40,
        repeats: int = 3, predict_n: int = 28000,
        trace: pathlib.Path | None = None) -> dict[str, Any]:
  """All figures of one benchmark run, measured in this process."""
  batch = batch or cfg.batch_size
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.batch_size = batch
  result: dict[str, Any] = {
      "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
      "isa": xla.describe_isa() if jax.default_backend() == "cpu" else "n/a",
      "model": cfg.model.name, "dtype": cfg.model.dtype, "batch": batch,
      "members": cfg.ensemble.size, "params": _params_per_member(cfg),
      "steps_per_call": cfg.train.steps_per_call, "fast_cpu": cfg.train.fast_cpu}
  if "widths" in cfg.model.kwargs:
    result["widths"] = ",".join(map(str, cfg.model.kwargs.widths))
  result.update(train_rate(cfg, batch, num_steps, repeats, trace))
  if cfg.ensemble.size > 1:
    # The same members trained one after another: the baseline the vmapped step must beat.
    single = ml_collections.ConfigDict(cfg.to_dict())
    single.ensemble.size = 1
    result["single_model_images_per_s"] = train_rate(single, batch, num_steps,
                                                     repeats)["train_images_per_s"]
    result["ensemble_vs_sequential"] = (result["train_images_per_s"]
                                        / result["single_model_images_per_s"])
  result.update(predict_rate(cfg, predict_n, repeats))
  result["matmul_gflops_per_s"] = matmul_gflops()
  result["roofline_fraction"] = result["train_gflops_per_s"] / result["matmul_gflops_per_s"]
  return result


def torch_rates(python: str, script: pathlib.Path, model: str, batch: int, num_steps: int,
                repeats: int, predict_n: int, widths: str | None = None,
                params: int | None = None) -> dict[str, float]:
  """Runs the PyTorch reference script with `python` in a subprocess; its figures as `torch_*`.

  The script builds the same model (`--model` at `--widths`, the config's) and optimizer as
  dr_jax's, and refuses to run one whose parameter count is not `params`.
  """
  if not script.is_file():
    raise UserError(f"{script} not found; run from the dr_jax checkout")
  # torch lives in its own environment if you like: with it installed, tensorboardX imports it
  # into every dr_jax process.
  # Under an XLA_FLAGS limit PyTorch gets the same one, so the ratios compare like with like.
  limit = xla.isa_limit()
  env = dict(os.environ, **xla.TORCH_ISA_ENV.get(limit or "", {}))
  check = subprocess.run([python, "-c", "import torch"], capture_output=True, env=env)
  if check.returncode:
    raise UserError(f"--vs-torch: {python} cannot import torch; pip install torch there, or pass "
                    "--vs-torch PATH/TO/python of an environment that has it")
  args = ["--model", model, "--batch", str(batch), "--steps", str(num_steps), "--repeats",
          str(repeats), "--predict-images", str(predict_n)]
  args += ["--widths", widths] if widths else []
  args += ["--params", str(params)] if params else []
  proc = subprocess.run([python, str(script), *args], capture_output=True, text=True, env=env)
  if proc.returncode:
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise UserError(f"{script} failed: {last}")
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  return {f"torch_{k}": v for k, v in figures.items() if k.endswith("per_s")}


def main(cfg: ml_collections.ConfigDict, batch: int | None, steps: int, repeats: int,
         predict_n: int = 28000, vs_torch: str | None = None,
         torch_script: pathlib.Path | None = None, trace: pathlib.Path | None = None) -> dict:
  """Prints a table and, as the last line, the figures as JSON."""
  result = run(cfg, batch, steps, repeats, predict_n, trace)
  if trace is not None:
    cpu = ("; XLA:CPU's convolutions run on its thread pool, their events cover only the "
           "dispatch" if jax.default_backend() == "cpu" else "")
    print(f"profile of one more round of train calls: {trace} (open its "
          "plugins/profile/*/*.trace.json.gz in ui.perfetto.dev). XLA ops timed there, ms per "
          f"step{cpu}:")
    for kind, ms in result["trace_ms_per_step"].items():
      print(f"  {ms:8.2f}  {kind}")
  if vs_torch is not None:
    assert torch_script is not None, "vs_torch needs torch_script"
    # Measured in the same invocation, one after the other, so the ratios share the machine's state.
    result.update(torch_rates(vs_torch, torch_script, str(result["model"]), int(result["batch"]),
                              steps, repeats, predict_n, result.get("widths"), result["params"]))
    result["train_vs_torch"] = result["train_images_per_s"] / result["torch_train_images_per_s"]
    result["predict_vs_torch"] = (result["predict_images_per_s"]
                                  / result["torch_predict_images_per_s"])
  width = max(len(k) for k in result)
  for key, value in result.items():
    if isinstance(value, dict):
      continue  # Printed above.
    print(f"{key:<{width}}  {value:,.2f}" if isinstance(value, float) else
          f"{key:<{width}}  {value}")
  print(json.dumps(result))
  return result
