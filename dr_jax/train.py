"""The training loop: data on device, jitted (vmapped-ensemble) steps, plateau LR, logs, resume.

A run trains `ensemble.size` members at once. Every per-member array has a leading member
axis; with one member that axis is squeezed away inside the compiled step, so a single model
runs exactly the single-model program.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from dr_jax import (build, checkpoint, data, distributed, interrupts, models, optim, parallel,
                    provenance, pseudo, steps, xla)
from dr_jax.config import check, flatten
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_text


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


def init_state(cfg: ml_collections.ConfigDict, tx, key: jax.Array) -> steps.TrainState:
  """Independently initialised members, stacked along a leading axis."""
  model = build.model(cfg)
  keys = jax.random.split(key, cfg.ensemble.size)
  return build.member_map(lambda k: steps.create_state(model, tx, k), cfg.ensemble.size, (0,),
                          cfg.ensemble.vectorize)(keys)


def _epoch_plan(n_train: int, cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(steps per epoch, fused calls of `steps_per_call`, leftover single steps)."""
  steps_per_epoch = n_train // cfg.batch_size
  if steps_per_epoch == 0:
    raise UserError(f"batch_size={cfg.batch_size} is larger than the {n_train} training images; "
                    "lower --config.batch_size")
  k = min(cfg.train.steps_per_call, steps_per_epoch)
  return steps_per_epoch, steps_per_epoch // k, steps_per_epoch % k


def epoch_batches(key: jax.Array, train_idx: jax.Array, steps_per_epoch: int,
                  batch_size: int) -> tuple[jax.Array, jax.Array]:
  """One member's epoch: a permutation of its rows as (steps, batch) indices, and step keys."""
  perm_key, step_key = jax.random.split(key)
  order = jax.random.permutation(perm_key, train_idx)[: steps_per_epoch * batch_size]
  return order.reshape(steps_per_epoch, batch_size), jax.random.split(step_key, steps_per_epoch)


def compile_train_steps(cfg: ml_collections.ConfigDict, state: steps.TrainState,
                        images: jax.Array, targets: jax.Array, batch_sharding: Any,
                        pre: steps.Preprocess, sizes: set[int]) -> dict[int, Callable]:
  """Ahead-of-time compiled `train_steps` (all members) for each fused step count in `sizes`.

  Compiled before the loop so epoch timings measure training, not compilation; the state is
  donated so parameters are updated in place. Batch indices are `(members, size, batch)`.
  """
  members = cfg.ensemble.size
  step = build.member_map(lambda s, x, y, idx, keys: steps.train_steps(s, x, y, idx, keys, pre),
                          members, (0, None, None, 0, 0), cfg.ensemble.vectorize)
  # The dataset is an argument, not a closure: closed-over arrays become compile-time constants.
  fn = jax.jit(step, donate_argnums=0,
               compiler_options=xla.compiler_options(cfg.train.fast_cpu))
  keys = jax.random.split(jax.random.key(0), (members, max(sizes)))
  # From host memory: device_put cannot spread a local jax.Array over other processes' devices.
  idx = lambda size: jax.device_put(np.zeros((members, size, cfg.batch_size), np.int32),
                                    batch_sharding)
  compiled = {size: fn.lower(state, images, targets, idx(size), keys[:, :size]).compile()
              for size in sorted(sizes)}
  return {size: _with_data(c, images, targets) for size, c in compiled.items()}


def _with_data(compiled, images: jax.Array, targets: jax.Array) -> Callable:
  return lambda state, batch_idx, keys: compiled(state, images, targets, batch_idx, keys)


class Evaluator:
  """Jitted evaluation of every member on its own validation rows (one compile per run)."""

  def __init__(self, split: build.Split, images: jax.Array, targets: jax.Array, batch_size: int,
               pre: steps.Preprocess, apply_fn: Callable, members: int, vectorize: str,
               fast_cpu: bool):
    n_val = split.val_idx.shape[1]
    self.batch_size = min(batch_size, n_val)
    size, self.num_batches = steps.batches(n_val, self.batch_size)
    pad = lambda a: np.stack([steps.pad_rows(row, size) for row in a])
    self.idx = jnp.asarray(pad(split.val_idx))
    self.mask = jnp.asarray(pad(np.ones(split.val_idx.shape, np.float32)))
    # Members sharing one validation set can be scored as an ensemble (mean of softmax).
    self.shared = bool((split.val_idx == split.val_idx[0]).all()) and members > 1
    self.val_labels = split.labels[split.val_idx[0]]

    def member_eval(variables, idx, mask, start):
      idx = jax.lax.dynamic_slice_in_dim(idx, start, self.batch_size)
      mask = jax.lax.dynamic_slice_in_dim(mask, start, self.batch_size)
      metrics, logits = steps.eval_step(apply_fn, variables, images[idx], targets[idx], mask, pre)
      return metrics, jax.nn.softmax(logits)

    self._step = jax.jit(build.member_map(member_eval, members, (0, 0, 0, None), vectorize),
                         compiler_options=xla.compiler_options(fast_cpu))

  def __call__(self, variables: dict) -> dict[str, Any]:
    """Per-member loss and accuracy `(members,)`, plus the ensemble's accuracy if shared."""
    totals, probs = None, []
    for i in range(self.num_batches):
      metrics, p = self._step(variables, self.idx, self.mask, i * self.batch_size)
      totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
      probs.append(p)
    totals = jax.device_get(totals)
    result = {"loss": totals["loss"] / totals["count"],
              "accuracy": totals["correct"] / totals["count"]}
    if self.shared:
      mean = np.concatenate(jax.device_get(probs), axis=1).mean(axis=0)[: len(self.val_labels)]
      result["ensemble_accuracy"] = float((mean.argmax(-1) == self.val_labels).mean())
    return result


_BEST_KEYS = ("member_best_epoch", "member_best_val_accuracy", "member_best_val_loss")


def is_better(accuracy: np.ndarray, loss: np.ndarray, best_accuracy: np.ndarray,
              best_loss: np.ndarray) -> np.ndarray:
  """Per member: higher validation accuracy, or the same accuracy at a lower loss.

  A small validation set ties often (1,050 images: steps of 0.1%); the loss breaks the tie
  instead of freezing the first epoch that reached it.
  """
  return (accuracy > best_accuracy) | ((accuracy == best_accuracy) & (loss < best_loss))


def stops_early(epoch: int, member_best_epoch: list[int], patience: int) -> bool:
  """Keras' EarlyStopping over members: none improved in the `patience` epochs up to `epoch`."""
  return patience > 0 and epoch - max(member_best_epoch) >= patience


def _keep_best(best: dict, current: dict, improved: np.ndarray) -> dict:
  """Per member: the current variables where it improved, else its best so far."""
  mask = jnp.asarray(improved)
  return jax.tree.map(lambda b, c: jnp.where(mask.reshape((-1,) + (1,) * (c.ndim - 1)), c, b),
                      best, current)


class _NoWriter:
  """TensorBoard for processes other than 0: one event file per run, not one per process."""

  def __getattr__(self, name: str) -> Callable:
    return lambda *args, **kwargs: None


def _log(message: str) -> None:
  if distributed.is_primary():
    print(message, file=sys.stderr, flush=True)


def _check_finite(loss: float, epoch: int, step: int, workdir: pathlib.Path) -> None:
  if not math.isfinite(loss):
    raise TrainingDiverged(
        f"training loss became {loss} at epoch {epoch} step {step}; the last good checkpoint "
        f"is kept in {workdir / 'checkpoints'}; lower --config.optimizer.lr and retrain")


def _fresh_meta(cfg: ml_collections.ConfigDict) -> dict:
  members = cfg.ensemble.size
  return {"epoch": 0, "plateau": [list(optim.PlateauState(lr=cfg.optimizer.lr))] * members,
          "member_best_epoch": [0] * members, "member_best_val_accuracy": [-1.0] * members,
          "member_best_val_loss": [math.inf] * members}


def _summary_fields(meta: dict) -> dict:
  """Run-level best: the latest epoch at which any member improved, and the members' mean."""
  return {"best_epoch": max(meta["member_best_epoch"]),
          "best_val_accuracy": float(np.mean(meta["member_best_val_accuracy"]))}


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: pathlib.Path,
                       data_dir: pathlib.Path) -> dict[str, Any]:
  """Trains `cfg` in `workdir` (resuming from its latest checkpoint) and returns the summary."""
  check(cfg)
  workdir = pathlib.Path(workdir)
  mesh = parallel.data_mesh(cfg.batch_size)
  primary = distributed.is_primary()
  split = build.load_split(cfg, data_dir)
  pseudo_record = None
  if cfg.pseudo.teacher:
    labels = pseudo.teacher_labels(cfg, data_dir)
    _log(labels.describe())
    split = pseudo.with_rows(split, labels.images, labels.labels)
    pseudo_record = labels.record()
  workdir.mkdir(parents=True, exist_ok=True)  # Only once the data is known to be good.
  members, n_train = cfg.ensemble.size, split.train_idx.shape[1]
  everywhere, by_batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  steps_per_epoch, n_calls, n_tail = _epoch_plan(n_train, cfg)
  k = cfg.train.steps_per_call if n_calls else 1

  model = build.model(cfg)
  tx = optim.make_optimizer(cfg, steps_per_epoch * cfg.num_epochs)
  init_key, train_key = jax.random.split(jax.random.key(cfg.seed))
  # Parameters and optimizer state are replicated; XLA all-reduces the gradients. Initialised
  # inside jit so every process of a multi-host run builds its part of the same global arrays.
  state = jax.jit(lambda key: init_state(cfg, tx, key), out_shardings=everywhere)(init_key)
  best_vars = jax.tree.map(jnp.copy, steps.variables(state))  # A copy: the state gets donated.
  meta = _fresh_meta(cfg)

  ckpts = checkpoint.Checkpoints(workdir)
  if ckpts.latest_epoch("latest") is not None:
    provenance.check_train_data(workdir, split.source, split.digest)
    provenance.check_pseudo_labels(workdir, pseudo_record)
    tree, meta = ckpts.restore("latest", target=_ckpt_tree(state))
    state = state.replace(**tree)
    best_vars, best_meta = ckpts.restore("best", target=best_vars)
    if best_meta["epoch"] > meta["epoch"]:
      # Killed between the best and latest saves: keep that best, never overwrite it with worse.
      meta |= {key: best_meta[key] for key in _BEST_KEYS}
    if primary:
      _truncate_metrics(workdir / "metrics.jsonl", meta["epoch"])
    _log(f"resuming {workdir} after epoch {meta['epoch']} (best so far: epoch "
         f"{_summary_fields(meta)['best_epoch']}, val accuracy "
         f"{_summary_fields(meta)['best_val_accuracy']:.4f})")
  plateaus = [optim.PlateauState(*p) for p in meta["plateau"]]
  if primary:
    provenance.write_run_files(workdir, cfg, meta["epoch"] > 0, split.source, split.digest,
                               pseudo_record)

  images, targets = jax.device_put((split.images, data.one_hot(split.labels)), everywhere)
  compile_start = time.time()
  compiled = compile_train_steps(cfg, state, images, targets, by_batch,
                                 build.preprocess(cfg, split.shift, split.scale, train=True),
                                 sizes={k, 1 if n_tail else k})
  evaluate = Evaluator(split, images, targets, cfg.train.eval_batch_size,
                       build.preprocess(cfg, split.shift, split.scale, train=False),
                       model.apply, members, cfg.ensemble.vectorize, cfg.train.fast_cpu)
  make_batches = jax.jit(jax.vmap(lambda key, idx: epoch_batches(key, idx, steps_per_epoch,
                                                                 cfg.batch_size)),
                         out_shardings=(by_batch, everywhere))
  train_idx = jax.device_put(split.train_idx, everywhere)

  writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=meta["epoch"] + 1) \
      if primary else _NoWriter()
  if meta["epoch"] == 0:
    writer.add_text("config", "```\n" + cfg.to_json(indent=2) + "\n```", 0)
  _log(f"{parallel.describe(mesh)}; {members} member{'s' if members > 1 else ''}; {n_train} train / "
       f"{split.val_idx.shape[1]} val images; {steps_per_epoch} steps of {cfg.batch_size} per "
       f"epoch; {models.count_params(state.params) // members:,} parameters per member; "
       f"train step compiled in {time.time() - compile_start:.1f}s")

  run_start, first_epoch, stopped_early = time.time(), meta["epoch"], False
  # Ctrl-C stops at the next safe point: after a jitted call, or after the epoch's saves.
  with interrupts.StopRequest() as stop:
    try:
      for epoch in range(meta["epoch"] + 1, cfg.num_epochs + 1):
        # Checked before the epoch, so a resumed run that stopped early stays stopped.
        if stops_early(meta["epoch"], meta["member_best_epoch"], cfg.train.early_stop):
          stopped_early = True
          _log(f"stopping after epoch {meta['epoch']}: no member's validation accuracy improved "
               f"since epoch {max(meta['member_best_epoch'])} (train.early_stop="
               f"{cfg.train.early_stop})")
          break
        if optim.is_per_epoch(cfg):
          lrs = np.array([optim.epoch_lr(cfg, epoch - 1, p) for p in plateaus], np.float32)
          state = state.replace(opt_state=optim.set_lr(state.opt_state, lrs))
        member_keys = jax.random.split(jax.random.fold_in(train_key, epoch), members)
        batch_idx, keys = make_batches(member_keys, train_idx)
        state, train_metrics, seconds = _run_epoch(state, compiled, batch_idx, keys, k, epoch,
                                                   cfg.num_epochs, workdir, by_batch, stop)
        val = evaluate(steps.variables(state))
        lr_used = np.asarray(jax.device_get(state.opt_state.hyperparams["learning_rate"]))
        plateaus = [optim.plateau_update(
            p, float(acc), factor=cfg.schedule.factor, patience=cfg.schedule.patience,
            min_lr=cfg.schedule.min_lr, min_delta=cfg.schedule.min_delta,
            cooldown=cfg.schedule.cooldown) for p, acc in zip(plateaus, val["accuracy"])]
        improved = is_better(val["accuracy"], val["loss"], np.array(meta["member_best_val_accuracy"]),
                             np.array(meta["member_best_val_loss"]))
        meta = {"epoch": epoch, "plateau": [list(p) for p in plateaus],
                "member_best_epoch": [epoch if i else e
                                      for i, e in zip(improved, meta["member_best_epoch"])],
                "member_best_val_accuracy": np.where(
                    improved, val["accuracy"], meta["member_best_val_accuracy"]).tolist(),
                "member_best_val_loss": np.where(
                    improved, val["loss"], meta["member_best_val_loss"]).tolist(),
                "norm": [split.shift, split.scale]}
        if improved.any():
          best_vars = _keep_best(best_vars, steps.variables(state), improved)
        record = {"epoch": epoch, "train_loss": train_metrics["loss"],
                  "train_accuracy": train_metrics["accuracy"],
                  "val_loss": float(np.mean(val["loss"])),
                  "val_accuracy": float(np.mean(val["accuracy"])), "lr": float(lr_used.mean()),
                  "epoch_time_s": seconds,
                  "images_per_s": members * steps_per_epoch * cfg.batch_size / seconds,
                  **_summary_fields(meta)}
        if members > 1:
          record |= {"val_accuracy_members": val["accuracy"].tolist(),
                     "lr_members": lr_used.tolist()}
          if "ensemble_accuracy" in val:
            record["val_accuracy_ensemble"] = val["ensemble_accuracy"]
        if primary:
          _write_epoch(writer, workdir, record)
        if improved.any():
          ckpts.save("best", epoch, best_vars, meta)
          # `latest` must never point past `best`: a kill between the two saves then only
          # repeats this epoch, which rewrites the same best checkpoint.
          ckpts.wait()
        ckpts.save("latest", epoch, _ckpt_tree(state), meta)
        eta = (time.time() - run_start) / (epoch - first_epoch) * (cfg.num_epochs - epoch)
        _log(f"epoch {epoch}/{cfg.num_epochs}: loss {record['train_loss']:.4f} acc "
             f"{record['train_accuracy']:.4f} | val loss {record['val_loss']:.4f} acc "
             f"{record['val_accuracy']:.4f}"
             + (f" ensemble {record['val_accuracy_ensemble']:.4f}"
                if "val_accuracy_ensemble" in record else "")
             + f"{' (best)' if improved.all() else ''} | lr {record['lr']:.2e} | {seconds:.1f}s, "
             f"{record['images_per_s']:.0f} img/s | ETA {eta / 60:.1f} min")
        stop.check()
    finally:
      ckpts.wait()
      ckpts.close()
  summary = _summary_fields(meta) | {"epochs": meta["epoch"], "stopped_early": stopped_early,
                                     "workdir": str(workdir)}
  writer.add_hparams({k: v for k, v in flatten(cfg).items() if isinstance(v, (int, float, str))},
                     {"hparam/best_val_accuracy": summary["best_val_accuracy"]}, name="hparams")
  writer.close()
  _log(f"best val accuracy {summary['best_val_accuracy']:.4f} at epoch {summary['best_epoch']}; "
       f"checkpoint {workdir / 'checkpoints' / 'best'}; TensorBoard: "
       f"tensorboard --logdir {workdir / 'tensorboard'}")
  return summary


def _ckpt_tree(state: steps.TrainState) -> dict:
  """The parts of the train state that are arrays (functions are rebuilt from the config)."""
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}


def _run_epoch(state, compiled, batch_idx, keys, k, epoch, num_epochs, workdir, by_batch, stop):
  """Runs one epoch of fused calls; metrics are read one call behind so dispatch stays async."""
  steps_per_epoch = batch_idx.shape[1]
  bar = tqdm.tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{num_epochs}", unit="step",
                  leave=False, file=sys.stderr,
                  disable=None if distributed.is_primary() else True, dynamic_ncols=True)
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  pending = None
  start = time.time()

  def consume(metrics, done, size):
    metrics = jax.device_get(metrics)
    for name in totals:
      totals[name] += float(np.sum(metrics[name]))
    _check_finite(float(np.sum(metrics["loss"])), epoch, done, workdir)
    bar.update(size)
    bar.set_postfix(loss=f"{totals['loss'] / totals['count']:.4f}",
                    acc=f"{totals['correct'] / totals['count']:.4f}", refresh=False)

  done = 0
  while done < steps_per_epoch:
    size = k if steps_per_epoch - done >= k else 1
    # device_put keeps the batch axis split across devices (a no-op when it already is).
    state, metrics = compiled[size](state, jax.device_put(batch_idx[:, done:done + size], by_batch),
                                    keys[:, done:done + size])
    done += size
    if pending is not None:
      consume(*pending)
    pending = (metrics, done, size)
    stop.check()
  consume(*pending)
  seconds = time.time() - start
  bar.close()
  count = totals["count"]
  return state, {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count}, seconds


def _write_epoch(writer: SummaryWriter, workdir: pathlib.Path, record: dict) -> None:
  """Appends the epoch to metrics.jsonl and TensorBoard (per member too, for ensembles)."""
  epoch = record["epoch"]
  for name, tag in (("train_loss", "loss/train"), ("val_loss", "loss/val"),
                    ("train_accuracy", "accuracy/train"), ("val_accuracy", "accuracy/val"),
                    ("val_accuracy_ensemble", "accuracy/val_ensemble"),
                    ("lr", "learning_rate"), ("epoch_time_s", "perf/epoch_time_s"),
                    ("images_per_s", "perf/images_per_s")):
    if name in record:
      writer.add_scalar(tag, record[name], epoch)
  for m, acc in enumerate(record.get("val_accuracy_members", [])):
    writer.add_scalar(f"members/{m}/val_accuracy", acc, epoch)
    writer.add_scalar(f"members/{m}/learning_rate", record["lr_members"][m], epoch)
  writer.flush()
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: pathlib.Path, last_epoch: int) -> None:
  """Drops metrics lines of epochs after the checkpoint (an epoch killed before its save)."""
  if path.exists():
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and json.loads(line)["epoch"] <= last_epoch]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
