"""The training loop: data on device, jitted steps, plateau LR, TensorBoard, orbax, resume."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from dr_jax import augment, checkpoint, data, models, optim, provenance, steps, xla
from dr_jax.config import check, flatten
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_text


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class Split:
  """Training and validation arrays, and the normalisation fitted on the training part."""

  train: data.Digits
  val: data.Digits
  shift: float
  scale: float


def load_split(cfg: ml_collections.ConfigDict, data_dir: pathlib.Path) -> Split:
  """Loads train.csv, applies the subset/NaN policy and makes the stratified split."""
  digits = data.load_csv(pathlib.Path(data_dir) / "train.csv", with_labels=True,
                         nan_policy=cfg.data.nan_policy, fill_value=cfg.data.fill_value)
  images, labels = digits.images, digits.labels
  if cfg.data.subset:
    images, labels = images[: cfg.data.subset], labels[: cfg.data.subset]
  train, val = data.split(images, labels, cfg.data.val_fraction, cfg.seed)
  shift, scale = data.normalization_stats(train.images, cfg.data.normalization)
  return Split(train, val, shift, scale)


def preprocess(cfg: ml_collections.ConfigDict, shift: float, scale: float,
               train: bool) -> steps.Preprocess:
  """The static preprocessing of a run; augmentation only for training."""
  a = cfg.augment
  aug = augment.AugmentConfig(a.rotation, a.zoom, a.shift, a.flip) if train else \
      augment.AugmentConfig()
  return steps.Preprocess(aug, shift, scale)


def build_model(cfg: ml_collections.ConfigDict):
  """The configured Flax module."""
  return models.create_model(cfg.model.name, cfg.model.dtype, **cfg.model.kwargs.to_dict())


def _epoch_plan(n_train: int, cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(steps per epoch, fused calls of `steps_per_call`, leftover single steps)."""
  steps_per_epoch = n_train // cfg.batch_size
  if steps_per_epoch == 0:
    raise UserError(f"batch_size={cfg.batch_size} is larger than the {n_train} training images; "
                    "lower --config.batch_size")
  k = min(cfg.train.steps_per_call, steps_per_epoch)
  return steps_per_epoch, steps_per_epoch // k, steps_per_epoch % k


class Evaluator:
  """Jitted, padded evaluation over a fixed array set (one compile for the whole run)."""

  def __init__(self, digits: data.Digits, batch_size: int, pre: steps.Preprocess, apply_fn):
    self.batch_size = min(batch_size, len(digits.labels))
    size, self.num_batches = steps.batches(len(digits.labels), self.batch_size)
    self.images = jnp.asarray(steps.pad_rows(digits.images, size))
    self.targets = jnp.asarray(steps.pad_rows(data.one_hot(digits.labels), size))
    self.mask = jnp.asarray(steps.pad_rows(np.ones(len(digits.labels), np.float32), size))
    self._step = jax.jit(lambda variables, x, y, m: steps.eval_step(apply_fn, variables, x, y, m,
                                                                     pre))

  def __call__(self, variables: dict) -> dict[str, float]:
    totals = None
    for i in range(self.num_batches):
      s = slice(i * self.batch_size, (i + 1) * self.batch_size)
      out = self._step(variables, self.images[s], self.targets[s], self.mask[s])
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}


def compile_train_steps(cfg: ml_collections.ConfigDict, state: steps.TrainState,
                        images: jax.Array, targets: jax.Array, pre: steps.Preprocess,
                        sizes: set[int]) -> dict[int, Any]:
  """Ahead-of-time compiled `train_steps` for each number of fused steps in `sizes`.

  Compiled before the loop so epoch timings measure training, not compilation; the state is
  donated so parameters are updated in place.
  """
  # The dataset is an argument, not a closure: closed-over arrays become compile-time constants.
  fn = jax.jit(lambda s, x, y, idx, keys: steps.train_steps(s, x, y, idx, keys, pre),
               donate_argnums=0, compiler_options=xla.train_compiler_options(cfg.train.fast_cpu))
  key = jax.random.key(0)
  compiled = {size: fn.lower(state, images, targets, jnp.zeros((size, cfg.batch_size), jnp.int32),
                             jax.random.split(key, size)).compile() for size in sorted(sizes)}
  return {size: functools.partial(_call_with_data, c, images, targets)
          for size, c in compiled.items()}


def _call_with_data(compiled, images, targets, state, batch_idx, keys):
  return compiled(state, images, targets, batch_idx, keys)


def _variables(state: steps.TrainState) -> dict:
  v = {"params": state.params}
  if state.batch_stats:
    v["batch_stats"] = state.batch_stats
  return v


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _check_finite(loss: float, epoch: int, step: int, workdir: pathlib.Path) -> None:
  if not math.isfinite(loss):
    raise TrainingDiverged(
        f"training loss became {loss} at epoch {epoch} step {step}; the last good checkpoint "
        f"is kept in {workdir / 'checkpoints'}; lower --config.optimizer.lr and retrain")


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: pathlib.Path,
                       data_dir: pathlib.Path) -> dict[str, Any]:
  """Trains `cfg` in `workdir` (resuming from its latest checkpoint) and returns the summary."""
  check(cfg)
  workdir = pathlib.Path(workdir)
  split = load_split(cfg, data_dir)
  workdir.mkdir(parents=True, exist_ok=True)  # Only once the data is known to be good.
  n_train = len(split.train.labels)
  steps_per_epoch, n_calls, n_tail = _epoch_plan(n_train, cfg)
  k = cfg.train.steps_per_call if n_calls else 1

  model = build_model(cfg)
  tx = optim.make_optimizer(cfg, steps_per_epoch * cfg.num_epochs)
  root = jax.random.key(cfg.seed)
  init_key, train_key = jax.random.split(root)
  state = steps.create_state(model, tx, init_key)
  plateau = optim.PlateauState(lr=cfg.optimizer.lr)
  meta = {"epoch": 0, "best_epoch": 0, "best_val_accuracy": -1.0, "plateau": list(plateau)}

  ckpts = checkpoint.Checkpoints(workdir)
  if ckpts.latest_epoch("latest") is not None:
    state_tree, meta = ckpts.restore("latest", target=_ckpt_tree(state))
    state = state.replace(**state_tree)
    plateau = optim.PlateauState(*meta["plateau"])
    best = ckpts.meta("best")
    if best and best["epoch"] > meta["epoch"]:
      # Killed between the best and latest saves: keep that best, never overwrite it with worse.
      meta |= {"best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"]}
    _truncate_metrics(workdir / "metrics.jsonl", meta["epoch"])
    _log(f"resuming {workdir} after epoch {meta['epoch']} (best so far: epoch "
         f"{meta['best_epoch']}, val accuracy {meta['best_val_accuracy']:.4f})")
  provenance.write_run_files(workdir, cfg, resumed=meta["epoch"] > 0)

  pre_train = preprocess(cfg, split.shift, split.scale, train=True)
  train_images = jnp.asarray(split.train.images)
  train_targets = jnp.asarray(data.one_hot(split.train.labels))
  compile_start = time.time()
  compiled = compile_train_steps(cfg, state, train_images, train_targets, pre_train,
                                 sizes={k, 1 if n_tail else k})
  evaluate = Evaluator(split.val, cfg.train.eval_batch_size,
                       preprocess(cfg, split.shift, split.scale, train=False), model.apply)

  writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=meta["epoch"] + 1)
  if meta["epoch"] == 0:
    writer.add_text("config", "```\n" + cfg.to_json(indent=2) + "\n```", 0)
  devices = jax.devices()
  _log(f"{len(devices)} device{'s' if len(devices) > 1 else ''} ({devices[0].platform}); "
       f"{n_train} train / {len(split.val.labels)} val images; {steps_per_epoch} steps of "
       f"{cfg.batch_size} per epoch; {models.count_params(state.params):,} parameters; "
       f"train step compiled in {time.time() - compile_start:.1f}s")

  run_start, first_epoch = time.time(), meta["epoch"]
  try:
    for epoch in range(meta["epoch"] + 1, cfg.num_epochs + 1):
      if optim.is_per_epoch(cfg):
        lr = optim.epoch_lr(cfg, epoch - 1, plateau)
        state = state.replace(opt_state=optim.set_lr(state.opt_state, lr))
      epoch_key = jax.random.fold_in(train_key, epoch)
      perm_key, step_key = jax.random.split(epoch_key)
      order = jax.random.permutation(perm_key, n_train)[: steps_per_epoch * cfg.batch_size]
      batch_idx = order.reshape(steps_per_epoch, cfg.batch_size)
      keys = jax.random.split(step_key, steps_per_epoch)
      state, train_metrics, seconds = _run_epoch(
          state, compiled, batch_idx, keys, k, epoch, cfg.num_epochs, workdir)
      val = evaluate(_variables(state))
      images_per_s = steps_per_epoch * cfg.batch_size / seconds
      lr_used = optim.current_lr(state.opt_state)
      plateau = optim.plateau_update(
          plateau, val["accuracy"], factor=cfg.schedule.factor, patience=cfg.schedule.patience,
          min_lr=cfg.schedule.min_lr, min_delta=cfg.schedule.min_delta,
          cooldown=cfg.schedule.cooldown)
      improved = val["accuracy"] > meta["best_val_accuracy"]
      meta = {"epoch": epoch, "plateau": list(plateau),
              "best_epoch": epoch if improved else meta["best_epoch"],
              "best_val_accuracy": max(val["accuracy"], meta["best_val_accuracy"]),
              "norm": [split.shift, split.scale]}
      record = {"epoch": epoch, "train_loss": train_metrics["loss"],
                "train_accuracy": train_metrics["accuracy"], "val_loss": val["loss"],
                "val_accuracy": val["accuracy"], "lr": lr_used, "epoch_time_s": seconds,
                "images_per_s": images_per_s, "best_epoch": meta["best_epoch"]}
      tree = _ckpt_tree(state)
      if improved:
        ckpts.save("best", epoch, tree, meta | {"val_accuracy": val["accuracy"]})
        # `latest` must never point past `best`: a kill between the two saves then only
        # repeats this epoch, which rewrites the same best checkpoint.
        ckpts.wait()
      ckpts.save("latest", epoch, tree, meta)
      _write_epoch(writer, workdir, record)
      eta = (time.time() - run_start) / (epoch - first_epoch) * (cfg.num_epochs - epoch)
      _log(f"epoch {epoch}/{cfg.num_epochs}: loss {record['train_loss']:.4f} acc "
           f"{record['train_accuracy']:.4f} | val loss {val['loss']:.4f} acc {val['accuracy']:.4f}"
           f"{' (best)' if improved else ''} | lr {lr_used:.2e} | {seconds:.1f}s, "
           f"{images_per_s:.0f} img/s | ETA {eta / 60:.1f} min")
  finally:
    ckpts.wait()
    ckpts.close()
  writer.add_hparams({k: v for k, v in flatten(cfg).items() if isinstance(v, (int, float, str))},
                     {"hparam/best_val_accuracy": meta["best_val_accuracy"]}, name="hparams")
  writer.close()
  summary = {"best_epoch": meta["best_epoch"], "best_val_accuracy": meta["best_val_accuracy"],
             "epochs": meta["epoch"], "workdir": str(workdir)}
  _log(f"best val accuracy {meta['best_val_accuracy']:.4f} at epoch {meta['best_epoch']}; "
       f"checkpoint {workdir / 'checkpoints' / 'best'}; TensorBoard: "
       f"tensorboard --logdir {workdir / 'tensorboard'}")
  return summary


def _ckpt_tree(state: steps.TrainState) -> dict:
  """The parts of the train state that are arrays (functions are rebuilt from the config)."""
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}


def _run_epoch(state, compiled, batch_idx, keys, k, epoch, num_epochs, workdir):
  """Runs one epoch of fused calls; metrics are read one call behind so dispatch stays async."""
  steps_per_epoch = len(batch_idx)
  bar = tqdm.tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{num_epochs}", unit="step",
                  leave=False, file=sys.stderr, disable=None, dynamic_ncols=True)
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  pending = None
  start = time.time()

  def consume(metrics, done):
    metrics = jax.device_get(metrics)
    for name in totals:
      totals[name] += float(metrics[name])
    _check_finite(float(metrics["loss"]), epoch, done, workdir)
    bar.update(int(metrics["count"]) // (int(batch_idx.shape[1])))
    bar.set_postfix(loss=f"{totals['loss'] / totals['count']:.4f}",
                    acc=f"{totals['correct'] / totals['count']:.4f}", refresh=False)

  done = 0
  while done < steps_per_epoch:
    size = k if steps_per_epoch - done >= k else 1
    state, metrics = compiled[size](state, batch_idx[done:done + size], keys[done:done + size])
    done += size
    if pending is not None:
      consume(*pending)
    pending = (metrics, done)
  consume(*pending)
  seconds = time.time() - start
  bar.close()
  count = totals["count"]
  return state, {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count}, seconds


def _write_epoch(writer: SummaryWriter, workdir: pathlib.Path, record: dict) -> None:
  """Appends the epoch to metrics.jsonl and TensorBoard."""
  epoch = record["epoch"]
  for name, tag in (("train_loss", "loss/train"), ("val_loss", "loss/val"),
                    ("train_accuracy", "accuracy/train"), ("val_accuracy", "accuracy/val"),
                    ("lr", "learning_rate"), ("epoch_time_s", "perf/epoch_time_s"),
                    ("images_per_s", "perf/images_per_s")):
    writer.add_scalar(tag, record[name], epoch)
  writer.flush()
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: pathlib.Path, last_epoch: int) -> None:
  """Drops metrics lines of epochs after the checkpoint (an epoch killed before its save)."""
  if path.exists():
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and json.loads(line)["epoch"] <= last_epoch]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
