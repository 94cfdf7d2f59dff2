"""The training loop: data on device, jitted (vmapped-ensemble) steps, plateau LR, logs, resume.

A run trains `ensemble.size` members at once. Every per-member array has a leading member
axis; with one member that axis is squeezed away inside the compiled step, so a single model
runs exactly the single-model program. The parts it calls each have their own module:
`run_state` (the typed record and the best/stop rules), `checkpoint` (best before latest,
resume), `evaluate` (validation through the one inference path) and `metrics` (log,
TensorBoard, metrics.jsonl).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from dr_jax import (augment, budget, build, checkpoint, data, distributed, evaluate, files,
                    interrupts, metrics, models, optim, parallel, provenance, steps, xla)
from dr_jax.config import check
from dr_jax.errors import UserError
from dr_jax.run_state import RunState

if TYPE_CHECKING:  # Only the type: training never imports the inference stack pseudo needs.
  from dr_jax.pseudo import PseudoLabels


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


def init_state(cfg: ml_collections.ConfigDict, tx, key: jax.Array) -> steps.TrainState:
  """Independently initialised members, stacked along a leading axis."""
  model, shape = build.model(cfg), build.image_shape(cfg)
  keys = jax.random.split(key, cfg.ensemble.size)
  ema = cfg.train.get("ema_decay", 0.0)
  return build.member_map(lambda k: steps.create_state(model, tx, k, shape, ema),
                          cfg.ensemble.size, (0,), cfg.ensemble.vectorize)(keys)


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """How an epoch's steps are grouped into jitted calls."""

  steps: int  # Steps per epoch.
  per_call: int  # Steps fused into one call;
  tail: int  # and the single steps left over at the end of each epoch.

  @property
  def call_sizes(self) -> set[int]:
    """The fused step counts to compile."""
    return {self.per_call, 1 if self.tail else self.per_call}


def epoch_plan(n_train: int, cfg: ml_collections.ConfigDict) -> EpochPlan:
  """Steps per epoch (whole batches only) and how they are fused."""
  steps_per_epoch = n_train // cfg.batch_size
  if steps_per_epoch == 0:
    raise UserError(f"batch_size={cfg.batch_size} is larger than the {n_train} training images; "
                    "lower --config.batch_size")
  per_call = min(cfg.train.steps_per_call, steps_per_epoch)
  return EpochPlan(steps_per_epoch, per_call, steps_per_epoch % per_call)


def epoch_batches(key: jax.Array, train_idx: jax.Array, steps_per_epoch: int,
                  batch_size: int) -> tuple[jax.Array, jax.Array]:
  """One member's epoch: a permutation of its rows as (steps, batch) indices, and step keys."""
  perm_key, step_key = jax.random.split(key)
  order = jax.random.permutation(perm_key, train_idx)[: steps_per_epoch * batch_size]
  return order.reshape(steps_per_epoch, batch_size), jax.random.split(step_key, steps_per_epoch)


def compile_train_steps(cfg: ml_collections.ConfigDict, state: steps.TrainState,
                        images: jax.Array, targets: jax.Array, batch_sharding: Any,
                        preprocess: steps.Preprocess, sizes: set[int]) -> dict[int, Callable]:
  """Ahead-of-time compiled `train_steps` (all members) for each fused step count in `sizes`.

  Compiled before the loop so epoch timings measure training, not compilation; the state is
  donated so parameters are updated in place. Batch indices are `(members, size, batch)`.
  """
  members = cfg.ensemble.size
  step = build.member_map(
      lambda s, x, y, idx, keys: steps.train_steps(s, x, y, idx, keys, preprocess), members,
      (0, None, None, 0, 0), cfg.ensemble.vectorize)
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


def keep_best(best: dict, current: dict, improved: np.ndarray) -> dict:
  """Per member: the current variables where it improved, else its best so far."""
  mask = jnp.asarray(improved)
  return jax.tree.map(lambda b, c: jnp.where(mask.reshape((-1,) + (1,) * (c.ndim - 1)), c, b),
                      best, current)


@dataclasses.dataclass(frozen=True)
class Program:
  """What a run compiles once: the fused train calls, the epoch's batches and validation."""

  plan: EpochPlan
  train_calls: dict[int, Callable]  # Fused step count → compiled call.
  make_batches: Callable  # (member keys, train rows) → (batch indices, step keys).
  train_idx: jax.Array
  batch_sharding: Any
  predictor: evaluate.Predictor  # Validation; its variables are replaced every epoch.


def compile_program(cfg: ml_collections.ConfigDict, split: build.Split, state: steps.TrainState,
                    mesh: jax.sharding.Mesh, plan: EpochPlan) -> Program:
  """Puts the data on the devices and compiles the train calls for `plan`."""
  replicated, batch_sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  targets = data.one_hot(split.labels, len(split.classes))
  images, targets = jax.device_put((split.images, targets), replicated)
  calls = compile_train_steps(cfg, state, images, targets, batch_sharded,
                              build.preprocess(cfg, split.shift, split.scale, train=True),
                              plan.call_sizes)
  make_batches = jax.jit(
      jax.vmap(lambda key, idx: epoch_batches(key, idx, plan.steps, cfg.batch_size)),
      out_shardings=(batch_sharded, replicated))
  predictor = evaluate.Predictor(
      build.model(cfg).apply, steps.variables(state),
      build.preprocess(cfg, split.shift, split.scale, train=False), cfg.ensemble.size,
      cfg.ensemble.vectorize, cfg.train.fast_cpu)
  return Program(plan, calls, make_batches, jax.device_put(split.train_idx, replicated),
                 batch_sharded, predictor)


@dataclasses.dataclass(frozen=True)
class EpochLoop:
  """The epoch loop of one session: what stays fixed from epoch to epoch."""

  cfg: ml_collections.ConfigDict
  workdir: pathlib.Path
  split: build.Split
  program: Program
  ckpts: checkpoint.Checkpoints
  writer: metrics.MetricsWriter
  train_key: jax.Array
  session_start: float  # The run's clock, for elapsed_s.

  def train_epochs(self, state: steps.TrainState, best: dict,
                   run: RunState) -> tuple[RunState, bool]:
    """Trains from `run.epoch` to num_epochs (or an early stop): the record, and whether it
    stopped early. Ctrl-C stops at the next safe point: after a jitted call, or after the
    epoch's saves."""
    cfg, first_epoch, start = self.cfg, run.epoch, time.time()
    with interrupts.StopRequest() as stop, self.ckpts:
      for epoch in range(run.epoch + 1, cfg.num_epochs + 1):
        # Checked before the epoch, so a resumed run that stopped early stays stopped.
        if run.stops_early(cfg.train.early_stop):
          metrics.log(f"stopping after epoch {run.epoch}: no member's validation accuracy "
                      f"improved since epoch {run.best_epoch} (train.early_stop="
                      f"{cfg.train.early_stop})")
          return run, True
        state, best, run, record, all_improved = self.epoch(state, best, run, epoch, stop)
        eta = (time.time() - start) / (epoch - first_epoch) * (cfg.num_epochs - epoch)
        metrics.log(_progress_line(record, all_improved, cfg.num_epochs, eta))
        _log_target(self.writer.records, cfg.train.target_accuracy, epoch)
        stop.check()
    return run, False

  def epoch(self, state: steps.TrainState, best: dict, run: RunState, epoch: int,
            stop: interrupts.StopRequest) -> tuple[steps.TrainState, dict, RunState,
                                                   dict[str, Any], bool]:
    """Trains, validates, records and saves one epoch: the new state, best variables and run
    record, the epoch's metrics, and whether every member improved."""
    cfg, program = self.cfg, self.program
    state = _set_epoch_lr(cfg, state, run, epoch)
    state, train, seconds = train_epoch(program, state, self.train_key, epoch, cfg.num_epochs,
                                        self.workdir, stop)
    scores = evaluate.validation_scores(
        dataclasses.replace(program.predictor, variables=steps.eval_variables(state)),
        self.split, cfg.train.eval_batch_size)
    run, improved = run.after_epoch(epoch, scores.accuracy, scores.loss,
                                    _plateau(cfg, run.plateau, scores.accuracy),
                                    keep_last=cfg.train.final_fit)
    if improved.any():
      best = keep_best(best, steps.eval_variables(state), improved)
    record = _epoch_record(run, train, scores, state, seconds, cfg, program.plan)
    self.writer.write_epoch(record | {"elapsed_s": self.writer.elapsed_before_s
                                      + time.time() - self.session_start})
    self.ckpts.save_epoch(_ckpt_tree(state), best if improved.any() else None, run)
    return state, best, run, record, bool(improved.all())


def _augmented_examples(cfg: ml_collections.ConfigDict, split: build.Split,
                        n: int = 32) -> np.ndarray:
  """The first `n` training images of member 0 as its augmentation draws them, in [0, 1]."""
  images = jnp.asarray(split.images[split.train_idx[0, :n]], jnp.float32)
  aug = build.preprocess(cfg, split.shift, split.scale, train=True).augment
  key = jax.random.fold_in(jax.random.key(cfg.seed), 0x5EE)  # Its own draw: training's is kept.
  return np.asarray(augment.random_affine(key, images, aug)) / 255.0


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: pathlib.Path,
                       data_dir: pathlib.Path,
                       pseudo_labels: PseudoLabels | None = None) -> dict[str, Any]:
  """Trains `cfg` in `workdir` (resuming from its latest checkpoint) and returns the summary.

  `pseudo_labels` (`pseudo.teacher_labels`, for a config with pseudo.teacher) join every
  member's training rows.
  """
  check(cfg)
  session_start = time.time()  # The run's clock: data, compile, epochs, saves.
  workdir = pathlib.Path(workdir)
  mesh = parallel.data_mesh(cfg.batch_size)
  metrics.log(f"loading data from {data_dir}…")
  split = _agreed_split(cfg, data_dir, pseudo_labels)
  cfg = build.resolve(cfg, split)  # The labels and image shape train.csv has.
  models.check_input(build.model(cfg), build.image_shape(cfg))
  _prepare_workdir(workdir)  # Only once the data is known to be good.
  ckpts = checkpoint.Checkpoints(workdir)
  resuming = ckpts.latest_epoch("latest") is not None
  # A resumed run under a time limit keeps the epoch count its first session measured.
  lim = budget.limit(cfg)
  earlier = budget.with_earlier_epochs(cfg, workdir) if lim and resuming else None
  cfg = earlier or cfg
  plan = epoch_plan(split.train_idx.shape[1], cfg)
  tx = optim.make_optimizer(cfg, plan.steps * cfg.num_epochs)
  init_key, train_key = jax.random.split(jax.random.key(cfg.seed))
  # Parameters and optimizer state are replicated; XLA all-reduces the gradients. Initialised
  # inside jit so every process of a multi-host run builds its part of the same global arrays.
  state = jax.jit(lambda key: init_state(cfg, tx, key),
                  out_shardings=parallel.replicated(mesh))(init_key)
  pseudo_record = pseudo_labels.record() if pseudo_labels else None
  state, best, run = _resume_or_start(cfg, workdir, ckpts, split, state, pseudo_record)
  program, compile_s = _compile_and_describe(cfg, split, state, mesh, plan)
  if lim and earlier is None:
    cfg, state, program = _fit_limit(cfg, lim, split, state, mesh, program, compile_s,
                                     session_start)
  # After the limit is resolved: config.json holds the epoch count the run trains.
  if distributed.is_primary():
    provenance.write_run_files(workdir, cfg, run.epoch > 0, split.source, split.digest,
                               pseudo_record)

  writer = metrics.MetricsWriter(workdir, cfg, run.epoch,
                                 _augmented_examples(cfg, split) if run.epoch == 0 else None)
  loop = EpochLoop(cfg, workdir, split, program, ckpts, writer, train_key, session_start)
  run, stopped_early = loop.train_epochs(state, best, run)
  summary = {"best_epoch": run.best_epoch, "best_val_accuracy": run.best_val_accuracy,
             "epochs": run.epoch, "stopped_early": stopped_early,
             "final_fit": bool(cfg.train.final_fit), "workdir": str(workdir)}
  writer.close(run.best_val_accuracy)
  metrics.log(f"best val accuracy {run.best_val_accuracy:.4f} at epoch {run.best_epoch}; "
              f"checkpoint {workdir / 'checkpoints' / 'best'}; TensorBoard: "
              f"tensorboard --logdir {workdir / 'tensorboard'}")
  return summary


def _compile_and_describe(cfg: ml_collections.ConfigDict, split: build.Split,
                          state: steps.TrainState, mesh: jax.sharding.Mesh,
                          plan: EpochPlan) -> tuple[Program, float]:
  """`compile_program`, and the log line that says what the run trains and how long the
  train step took to compile: the program and those seconds."""
  metrics.log("compiling the train step…")
  compile_start = time.time()
  program = compile_program(cfg, split, state, mesh, plan)
  compile_s = time.time() - compile_start
  metrics.log(f"{parallel.describe(mesh)}; {_plural(cfg.ensemble.size, 'member')}; "
              f"{split.train_idx.shape[1]} train / {split.val_idx.shape[1]} val images; "
              f"{plan.steps} steps of {cfg.batch_size} per epoch; "
              f"{models.count_params(state.params) // cfg.ensemble.size:,} parameters per member; "
              f"train step compiled in {compile_s:.1f}s")
  return program, compile_s

def _fit_limit(cfg: ml_collections.ConfigDict, lim: budget.Limit, split: build.Split,
               state: steps.TrainState, mesh: jax.sharding.Mesh, program: Program,
               compile_s: float, session_start: float) -> tuple[ml_collections.ConfigDict,
                                                                steps.TrainState, Program]:
  """The config, state and program with the epochs `lim` allows on this machine."""
  cost = _epoch_cost(cfg, split, state, program)
  # A per-step schedule's length is compiled into the step: another count compiles again.
  recompile_s = 0.0 if optim.is_per_epoch(cfg) else compile_s
  epochs = _epochs_under(lim, cfg.num_epochs, cost, recompile_s, session_start)
  capped = f" (num_epochs={cfg.num_epochs} would not end in time)" \
      if lim.caps and epochs < cfg.num_epochs else ""
  metrics.log(f"{lim.key}={lim.minutes:g}: {_plural(epochs, 'epoch')}{capped} of "
              f"≈ {cost.total_s:.1f}s (train {cost.train_s:.1f}s, validation "
              f"{cost.validation_s:.1f}s, +{budget.MARGIN:.0%}) after "
              f"{time.time() - session_start:.0f}s of loading and compiling; "
              f"num_epochs={epochs} goes into config.json")
  while recompile_s and epochs != cfg.num_epochs:
    cfg = budget.with_epochs(cfg, epochs)
    start = time.time()
    state = state.replace(tx=optim.make_optimizer(cfg, program.plan.steps * epochs))
    program = compile_program(cfg, split, state, mesh, program.plan)
    recompile_s = time.time() - start
    # The first compile may have come from the compilation cache and this one not: keep the
    # count if it still fits, else lower it and compile once more.
    epochs = _epochs_under(dataclasses.replace(lim, caps=True), epochs, cost, recompile_s,
                           session_start)
    if epochs != cfg.num_epochs:
      metrics.log(f"{lim.key}={lim.minutes:g}: compiling for {cfg.num_epochs} epochs took "
                  f"{recompile_s:.0f}s, so {_plural(epochs, 'epoch')} fit; num_epochs={epochs} "
                  "goes into config.json")
  return budget.with_epochs(cfg, epochs), state, program


def _epochs_under(lim: budget.Limit, num_epochs: int, cost: budget.EpochCost, recompile_s: float,
                  session_start: float) -> int:
  """budget.epochs_under now, agreed by every process (each measured its own rate)."""
  spent_s = time.time() - session_start
  epochs = distributed.fail_together(lambda: budget.epochs_under(
      lim, num_epochs, spent_s, cost, recompile_s))
  return distributed.min_over_processes(epochs)


def _epoch_cost(cfg: ml_collections.ConfigDict, split: build.Split, state: steps.TrainState,
                program: Program) -> budget.EpochCost:
  """An epoch's train calls and validation pass, timed on a copy of the state: fused calls
  after one untimed, for budget.MEASURE_S or at most an epoch, and a second validation pass."""
  k = program.plan.per_call
  members = program.train_idx.shape[0]
  idx, keys = program.make_batches(jax.random.split(jax.random.key(0), members),
                                   program.train_idx)
  calls = ((jax.device_put(idx[:, i * k:(i + 1) * k], program.batch_sharding),
            keys[:, i * k:(i + 1) * k]) for i in range(program.plan.steps // k))
  per_call = budget.seconds_per_call(program.train_calls[k], state, calls)
  predictor = dataclasses.replace(program.predictor, variables=steps.eval_variables(state))
  validation_s = budget.seconds_of(
      lambda: evaluate.validation_scores(predictor, split, cfg.train.eval_batch_size))
  return budget.EpochCost(per_call * program.plan.steps / k, validation_s)


def _resume_or_start(cfg: ml_collections.ConfigDict, workdir: pathlib.Path,
                     ckpts: checkpoint.Checkpoints, split: build.Split, state: steps.TrainState,
                     pseudo_record: dict | None) -> tuple[steps.TrainState, dict, RunState]:
  """The run's state, best variables and record: from `latest` if it has one, else fresh."""
  best = jax.tree.map(jnp.copy, steps.eval_variables(state))  # A copy: the state gets donated.
  if ckpts.latest_epoch("latest") is None:
    return state, best, RunState.fresh(cfg.ensemble.size, cfg.optimizer.lr,
                                       (split.shift, split.scale))
  # Another config or other data would rebuild other splits: validation images the run already
  # trained on.
  provenance.check_config(workdir, cfg)
  provenance.check_train_data(workdir, split.source, split.digest)
  provenance.check_pseudo_labels(workdir, pseudo_record)
  resumed = ckpts.resume(_ckpt_tree(state), best)
  assert resumed is not None  # `latest` exists.
  tree, best, run = resumed
  metrics.log(f"resuming {workdir} after epoch {run.epoch} (best so far: epoch "
              f"{run.best_epoch}, val accuracy {run.best_val_accuracy:.4f})")
  return state.replace(**tree), best, run


def _agreed_split(cfg: ml_collections.ConfigDict, data_dir: pathlib.Path,
                  pseudo_labels: PseudoLabels | None) -> build.Split:
  """`_training_split` on every process: a missing or bad file on one ends them all, and they
  must hold the same digits."""
  split = distributed.fail_together(lambda: _training_split(cfg, data_dir, pseudo_labels))
  distributed.check_same("training data (sha256 of train.csv's digits)", split.digest)
  return split


def _prepare_workdir(workdir: pathlib.Path) -> None:
  """Creates the run directory and deletes the temp files that killed writes left in it."""
  workdir.mkdir(parents=True, exist_ok=True)
  for tmp in files.remove_stale_temps(workdir):
    metrics.log(f"removed {tmp}: a temp file that a killed write left")


def _training_split(cfg: ml_collections.ConfigDict, data_dir: pathlib.Path,
                    pseudo_labels: PseudoLabels | None) -> build.Split:
  """The config's split, with the pseudo-labelled rows the config asks for."""
  split = build.load_split(cfg, data_dir)
  if bool(cfg.pseudo.teacher) != (pseudo_labels is not None):
    raise UserError(f"pseudo.teacher={cfg.pseudo.teacher!r} but pseudo-labels were "
                    f"{'given' if pseudo_labels is not None else 'not given'}; pass "
                    "pseudo.teacher_labels(cfg, data_dir) exactly when pseudo.teacher is set")
  if cfg.train.final_fit:
    n_val = split.val_idx.shape[1]
    metrics.log(f"train.final_fit: training on all {split.train_idx.shape[1] + n_val} labelled "
                f"rows and keeping the last epoch; the {n_val} validation images are among them, "
                "so validation accuracy is not held out")
    split = split.with_validation_trained()
  if pseudo_labels is None:
    return split
  metrics.log(pseudo_labels.describe())
  unknown = np.setdiff1d(pseudo_labels.labels, split.classes)
  if len(unknown):
    raise UserError(f"pseudo.teacher={cfg.pseudo.teacher} predicts label {int(unknown[0])}, "
                    "which train.csv does not have; the teacher must be trained on the same "
                    "labels")
  return split.with_training_rows(pseudo_labels.images,
                                  np.searchsorted(split.classes, pseudo_labels.labels))


def _set_epoch_lr(cfg: ml_collections.ConfigDict, state: steps.TrainState, run: RunState,
                  epoch: int) -> steps.TrainState:
  """Per-epoch schedules (plateau, constant, exponential) set each member's rate here."""
  if not optim.is_per_epoch(cfg):
    return state
  lrs = np.array([optim.epoch_lr(cfg, epoch - 1, p) for p in run.plateau], np.float32)
  return state.replace(opt_state=optim.set_lr(state.opt_state, lrs))


def _plateau(cfg: ml_collections.ConfigDict, plateau: tuple[optim.PlateauState, ...],
             accuracy: np.ndarray) -> tuple[optim.PlateauState, ...]:
  """Each member's ReduceLROnPlateau step on its validation accuracy."""
  s = cfg.schedule
  return tuple(optim.plateau_update(p, float(acc), factor=s.factor, patience=s.patience,
                                    min_lr=s.min_lr, min_delta=s.min_delta, cooldown=s.cooldown)
               for p, acc in zip(plateau, accuracy))


def _ckpt_tree(state: steps.TrainState) -> dict:
  """The parts of the train state that are arrays (functions are rebuilt from the config)."""
  tree = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}
  return tree | ({"ema_params": state.ema_params} if state.ema_decay else {})


def _epoch_record(run: RunState, train: dict[str, float], scores: evaluate.Scores,
                  state: steps.TrainState, seconds: float, cfg: ml_collections.ConfigDict,
                  plan: EpochPlan) -> dict[str, Any]:
  """One line of metrics.jsonl: the epoch's training and validation figures, rate and best."""
  members = cfg.ensemble.size
  lr_used = np.asarray(jax.device_get(state.opt_state.hyperparams["learning_rate"]))
  record = {"epoch": run.epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "val_loss": float(np.mean(scores.loss)),
            "val_accuracy": float(np.mean(scores.accuracy)), "lr": float(lr_used.mean()),
            "epoch_time_s": seconds,
            "images_per_s": members * plan.steps * cfg.batch_size / seconds,
            "best_epoch": run.best_epoch, "best_val_accuracy": run.best_val_accuracy}
  if members > 1:
    record |= {"val_accuracy_members": scores.accuracy.tolist(),
               "lr_members": lr_used.tolist()}
    if scores.ensemble_accuracy is not None:
      record["val_accuracy_ensemble"] = scores.ensemble_accuracy
  return record


def _progress_line(record: dict[str, Any], all_improved: bool, num_epochs: int,
                   eta_s: float) -> str:
  """The log line of one epoch."""
  ensemble = (f" ensemble {record['val_accuracy_ensemble']:.4f}"
              if "val_accuracy_ensemble" in record else "")
  return (f"epoch {record['epoch']}/{num_epochs}: loss {record['train_loss']:.4f} acc "
          f"{record['train_accuracy']:.4f} | val loss {record['val_loss']:.4f} acc "
          f"{record['val_accuracy']:.4f}{ensemble}{' (best)' if all_improved else ''} | lr "
          f"{record['lr']:.2e} | {record['epoch_time_s']:.1f}s, "
          f"{record['images_per_s']:.0f} img/s | ETA {eta_s / 60:.1f} min")


def _log_target(records: list[dict[str, Any]], target: float, epoch: int) -> None:
  """Says so when this epoch is the first whose validation accuracy reached `target`."""
  reached = metrics.time_to_accuracy(records, target)
  if reached and reached[0] == epoch:
    metrics.log(f"validation accuracy first reached {target:.4f} (train.target_accuracy) at "
                f"epoch {epoch}, {reached[1]:.1f} min into the run")


def _plural(n: int, word: str) -> str:
  return f"{n} {word}{'s' if n > 1 else ''}"


def _check_finite(loss: float, epoch: int, step: int, workdir: pathlib.Path) -> None:
  if not math.isfinite(loss):
    raise TrainingDiverged(
        f"training loss became {loss} at epoch {epoch} step {step}; the last good checkpoint "
        f"is kept in {workdir / 'checkpoints'}; lower --config.optimizer.lr and retrain")


def train_epoch(program: Program, state: steps.TrainState, train_key: jax.Array, epoch: int,
                num_epochs: int, workdir: pathlib.Path,
                stop: interrupts.StopRequest) -> tuple[steps.TrainState, dict[str, float], float]:
  """One epoch of fused calls: (state, mean train loss and accuracy, seconds).

  Metrics are read one call behind, so dispatch stays asynchronous.
  """
  members = program.train_idx.shape[0]
  member_keys = jax.random.split(jax.random.fold_in(train_key, epoch), members)
  batch_idx, keys = program.make_batches(member_keys, program.train_idx)
  steps_per_epoch, k = program.plan.steps, program.plan.per_call
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
    state, metrics = program.train_calls[size](
        state, jax.device_put(batch_idx[:, done:done + size], program.batch_sharding),
        keys[:, done:done + size])
    done += size
    if pending is not None:
      consume(*pending)
    pending = (metrics, done, size)
    stop.check()
  assert pending is not None  # An epoch has at least one step.
  consume(*pending)
  seconds = time.time() - start
  bar.close()
  count = totals["count"]
  return state, {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count}, seconds
