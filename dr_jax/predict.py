"""Best checkpoint → vectorized predictions → `submission.csv`; and scoring a submission."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils

from dr_jax import (augment, build, checkpoint, data, distributed, parallel, provenance, steps,
                    xla)
from dr_jax.errors import UserError
from dr_jax.files import atomic_write_text


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A trained model (or ensemble) ready for inference."""

  apply_fn: Callable
  variables: dict  # Stacked along a leading member axis.
  pre: steps.Preprocess
  members: int
  epoch: int
  val_accuracy: float
  vectorize: str = "auto"  # How members are mapped: see build.loops_members.
  fast_cpu: bool = True  # XLA:CPU compiler options, as in training: see xla.py.
  tta: int = 1  # The run's predict.tta: test-time transforms when a call names none.

  def member_logits(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits `(members, n, 10)` for images `(n, 28, 28, 1)`, in fixed-size jitted batches.

    Each batch is split across all devices (of every process); the logits come back whole.
    """
    n, devices = len(images), jax.device_count()
    batch_size = -(-min(batch_size, max(n, 1)) // devices) * devices
    size, count = steps.batches(n, batch_size)
    mesh = parallel.data_mesh(batch_size)
    stacked = steps.pad_rows(np.asarray(images), size).reshape(count, batch_size,
                                                               *images.shape[1:])
    out = _member_logits(self.fast_cpu)(
        self.apply_fn, parallel.put(self.variables, parallel.replicated(mesh)),
        jax.device_put(stacked, parallel.stacked_batches(mesh)), self.pre, self.members,
        self.vectorize)
    return multihost_utils.process_allgather(out, tiled=True)[:, :n]

  def member(self, index: int) -> Predictor:
    """The predictor of one ensemble member."""
    one = jax.tree.map(lambda leaf: leaf[index:index + 1], self.variables)
    return dataclasses.replace(self, variables=one, members=1)

  def probabilities(self, images: np.ndarray, tta: int | None = None, vote: bool = False,
                    batch_size: int = 1000) -> np.ndarray:
    """Class probabilities `(n, 10)`: softmax averaged over members and `tta` transforms.

    `tta=None` uses the run's configured count. With `vote`, each member × transform casts
    one vote for its top class instead.
    """
    tta = self.tta if tta is None else tta
    augment.check_tta(tta, f"--tta {tta}")
    total = np.zeros((len(images), data.NUM_CLASSES), np.float64)
    for matrix in augment.tta_matrices(tta):
      view = images if tta == 1 else _warp_all(jnp.asarray(images, jnp.float32), matrix)
      logits = self.member_logits(np.asarray(view), batch_size)
      if vote:
        total += np.eye(data.NUM_CLASSES)[logits.argmax(-1)].sum(axis=0)
      else:
        total += np.asarray(jax.nn.softmax(logits)).sum(axis=0)
    return total / total.sum(axis=1, keepdims=True)


@functools.cache
def _member_logits(fast_cpu: bool) -> Callable:
  """The jitted predict program, compiled with the fast-path options or XLA's defaults."""

  def member_logits(apply_fn: Callable, variables: dict, stacked: jax.Array,
                    pre: steps.Preprocess, members: int, vectorize: str) -> jax.Array:
    """Every member's logits, mapped over members and batched over images."""
    one = lambda v: steps.batched_logits(apply_fn, v, stacked, pre)
    return build.member_map(one, members, (0,), vectorize)(variables)

  return jax.jit(member_logits, static_argnames=("apply_fn", "pre", "members", "vectorize"),
                 compiler_options=xla.compiler_options(fast_cpu))


@jax.jit
def _warp_all(images: jax.Array, matrix: jax.Array) -> jax.Array:
  """One deterministic transform applied to every image."""
  return jax.vmap(augment.warp, in_axes=(0, None))(images, matrix)


def load_predictor(workdir: pathlib.Path, kind: str = "best") -> Predictor:
  """Rebuilds the run's model from its saved config and restores the `kind` checkpoint."""
  workdir = pathlib.Path(workdir)
  cfg = provenance.read_config(workdir)
  model = build.model(cfg)
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    tree, meta = ckpts.restore(kind)
  # Both kinds hold params (and batch_stats); `latest` also holds the optimizer state.
  variables = {"params": tree["params"]}
  if tree.get("batch_stats"):
    variables["batch_stats"] = tree["batch_stats"]
  shift, scale = meta["norm"]
  return Predictor(model.apply, variables,
                   build.preprocess(cfg, shift, scale, train=False), cfg.ensemble.size,
                   int(meta["epoch"]), float(np.mean(meta["member_best_val_accuracy"])),
                   # Runs trained before these options existed lack them.
                   cfg.ensemble.get("vectorize", "auto"), cfg.train.get("fast_cpu", True),
                   cfg.get("predict", {}).get("tta", 1))


def submission_text(labels: np.ndarray) -> str:
  """Kaggle's format: `ImageId,Label` with 1-based ImageIds, one row per test image."""
  rows = "".join(f"{i},{int(label)}\n" for i, label in enumerate(labels, start=1))
  return "ImageId,Label\n" + rows


def predict(workdir: pathlib.Path, data_dir: pathlib.Path, out: pathlib.Path | None = None,
            tta: int | None = None, vote: bool = False) -> tuple[pathlib.Path, Predictor]:
  """Predicts test.csv with the best checkpoint and writes the submission atomically.

  `tta=None` uses the run's predict.tta. The submission goes to WORKDIR/submission.csv unless
  `out` is given.
  """
  out = pathlib.Path(out) if out else pathlib.Path(workdir) / "submission.csv"
  out, (predictor,) = blend([workdir], data_dir, out, tta, vote)
  return out, predictor


def blend(workdirs: Sequence[pathlib.Path], data_dir: pathlib.Path, out: pathlib.Path,
          tta: int | None = None, vote: bool = False) -> tuple[pathlib.Path, list[Predictor]]:
  """Predicts test.csv with several runs' best checkpoints, each member weighted alike.

  Runs of different architectures or configs blend too, which one vmapped program cannot
  hold. `tta=None` uses each run's predict.tta.
  """
  total, predictors = None, []
  for workdir in workdirs:
    predictor = load_predictor(workdir)
    cfg = provenance.read_config(workdir)
    test = build.load_test(cfg, data_dir)
    probs = predictor.members * predictor.probabilities(test.images, tta=tta, vote=vote)
    if total is not None and probs.shape != total.shape:
      raise UserError(f"{workdir}: its data settings keep {len(probs)} test images, the runs "
                      f"before it {len(total)}; blend runs with the same data.nan_policy")
    total = probs if total is None else total + probs
    predictors.append(predictor)
  if distributed.is_primary():  # Every process holds all the labels; one writes them.
    atomic_write_text(out, submission_text(total.argmax(axis=-1)))
  return pathlib.Path(out), predictors


@dataclasses.dataclass(frozen=True)
class Validation:
  """Validation errors of a run's members (and ensemble) for several test-time-transform counts."""

  ttas: tuple[int, ...]
  member_errors: np.ndarray  # (len(ttas), members): each on its own validation split.
  ensemble_errors: np.ndarray | None  # (len(ttas),) when all members share one split.
  n_val: int  # Images in each member's validation split.

  def table(self) -> str:
    """A Markdown table: one row per TTA count."""
    members = self.member_errors.shape[1]
    head = ["tta", *(f"member {m}" for m in range(members)), "member mean accuracy"]
    if self.ensemble_errors is not None:
      head.append("ensemble accuracy")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, tta in enumerate(self.ttas):
      errors = self.member_errors[i]
      row = [str(tta), *(str(int(e)) for e in errors), f"{1 - errors.mean() / self.n_val:.5f}"]
      if self.ensemble_errors is not None:
        row.append(f"{1 - self.ensemble_errors[i] / self.n_val:.5f} "
                   f"({int(self.ensemble_errors[i])} wrong)")
      lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def validate(workdir: pathlib.Path, data_dir: pathlib.Path,
             ttas: tuple[int, ...] = (1, 3, 5, 7, 9)) -> Validation:
  """Errors of each member of the best checkpoint on its own validation split, per TTA count.

  The split is rebuilt from the run's config and train.csv, so `data_dir` must hold the
  train.csv the run was trained on (checked against provenance.json). This is how to choose
  predict.tta without the test answers.
  """
  for tta in ttas:
    augment.check_tta(tta, f"--tta {tta}")
  predictor = load_predictor(workdir)
  cfg, split = build.load_run_split(workdir, data_dir)
  member_errors = np.zeros((len(ttas), predictor.members), np.int64)
  shared = predictor.members > 1 and not cfg.ensemble.own_split
  ensemble_errors = np.zeros(len(ttas), np.int64) if shared else None
  for m in range(predictor.members):
    member = predictor.member(m)
    images, labels = split.images[split.val_idx[m]], split.labels[split.val_idx[m]]
    for i, tta in enumerate(ttas):
      wrong = member.probabilities(images, tta=tta).argmax(-1) != labels
      member_errors[i, m] = wrong.sum()
  if shared:
    for i, tta in enumerate(ttas):
      wrong = predictor.probabilities(split.val.images, tta=tta).argmax(-1) != split.val.labels
      ensemble_errors[i] = wrong.sum()
  return Validation(tuple(ttas), member_errors, ensemble_errors, split.val_idx.shape[1])


def read_labels(path: pathlib.Path, role: str) -> pd.Series:
  """Reads an `ImageId,Label` file into a Series indexed by ImageId, validated."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{role} file {path} not found")
  try:
    frame = pd.read_csv(path, encoding="utf-8-sig")
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not a readable CSV ({str(e).strip().splitlines()[-1]})") from None
  if list(frame.columns) != ["ImageId", "Label"]:
    raise UserError(f"{path}: header is {','.join(map(str, frame.columns))}; "
                    "expected ImageId,Label")
  for column in ("ImageId", "Label"):
    if not pd.api.types.is_integer_dtype(frame[column]):
      bad = frame[column][pd.to_numeric(frame[column], errors="coerce").isna()
                          | (pd.to_numeric(frame[column], errors="coerce") % 1 != 0)]
      row = int(bad.index[0]) if len(bad) else 0
      raise UserError(f"{path}: line {row + 2}: {column} must be an integer, got "
                      f"{frame[column].iloc[row]!r}")
  dupes = frame["ImageId"][frame["ImageId"].duplicated()]
  if len(dupes):
    raise UserError(f"{path}: ImageId {int(dupes.iloc[0])} appears more than once "
                    f"({len(dupes)} duplicate row(s)); each ImageId must appear once")
  return frame.set_index("ImageId")["Label"]


def score(submission: pathlib.Path, answers: pathlib.Path) -> float:
  """Accuracy of a submission against an answers file, like Kaggle's leaderboard."""
  predicted = read_labels(submission, "submission")
  truth = read_labels(answers, "answers")
  missing = truth.index.difference(predicted.index)
  extra = predicted.index.difference(truth.index)
  if len(missing) or len(extra):
    parts = []
    if len(missing):
      parts.append(f"{len(missing)} ImageId(s) missing (first {int(missing[0])})")
    if len(extra):
      parts.append(f"{len(extra)} unknown ImageId(s) (first {int(extra[0])})")
    raise UserError(f"{submission}: {'; '.join(parts)}; a submission needs exactly one row for "
                    f"each of the {len(truth)} ImageIds in {answers}")
  return float((predicted.loc[truth.index].to_numpy() == truth.to_numpy()).mean())
