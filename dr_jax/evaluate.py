"""The one inference path: members × test-time transforms → logits, probabilities and accuracy.

Validation during training, `predict`, `validate`, `report`, pseudo-labels and `bench` all
compute through a `Predictor`, so every number a run reports comes from the same program.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from dr_jax import (augment, build, checkpoint, models, parallel, provenance, steps,
                    xla)
from dr_jax.errors import UserError
from dr_jax.run_state import RunState


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A trained model (or ensemble) ready for inference."""

  apply_fn: Callable
  variables: dict  # Stacked along a leading member axis.
  preprocess: steps.Preprocess
  members: int
  vectorize: str = "auto"  # How members are mapped: see build.loops_members.
  fast_cpu: bool = True  # XLA:CPU compiler options, as in training: see xla.py.
  tta: int = 1  # The run's predict.tta: test-time transforms when a call names none.
  run: RunState | None = None  # The checkpoint's record, when loaded from one.

  def member_logits(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits `(members, n, classes)` for images `(n, height, width, channels)`, in fixed-size
    jitted batches.

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
        jax.device_put(stacked, parallel.stacked_batches(mesh)), self.preprocess, self.members,
        self.vectorize)
    return np.asarray(multihost_utils.process_allgather(out, tiled=True)[:, :n])

  def member(self, index: int) -> Predictor:
    """The predictor of one ensemble member."""
    one = jax.tree.map(lambda leaf: leaf[index:index + 1], self.variables)
    return dataclasses.replace(self, variables=one, members=1)

  def probabilities(self, images: np.ndarray, tta: int | None = None, vote: bool = False,
                    batch_size: int = 1000) -> np.ndarray:
    """Class probabilities `(n, classes)`: softmax averaged over members and `tta` transforms.

    `tta=None` uses the run's configured count. With `vote`, each member × transform casts
    one vote for its top class instead.
    """
    tta = self.tta if tta is None else tta
    augment.check_tta(tta, f"--tta {tta}")
    total = np.zeros((), np.float64)
    for matrix in augment.tta_matrices(tta, *np.shape(images)[1:3]):
      view = images if tta == 1 else _warp_all(jnp.asarray(images, jnp.float32), matrix)
      logits = self.member_logits(np.asarray(view), batch_size)
      if vote:
        total = total + np.eye(logits.shape[-1])[logits.argmax(-1)].sum(axis=0)
      else:
        total = total + np.asarray(jax.nn.softmax(logits)).sum(axis=0)
    return total / total.sum(axis=1, keepdims=True)


@functools.cache
def _member_logits(fast_cpu: bool) -> Callable:
  """The jitted predict program, compiled with the fast-path options or XLA's defaults."""

  def member_logits(apply_fn: Callable, variables: dict, stacked: jax.Array,
                    preprocess: steps.Preprocess, members: int, vectorize: str) -> jax.Array:
    """Every member's logits, mapped over members and batched over images."""
    one = lambda v: steps.batched_logits(apply_fn, v, stacked, preprocess)
    return build.member_map(one, members, (0,), vectorize)(variables)

  return jax.jit(member_logits,
                 static_argnames=("apply_fn", "preprocess", "members", "vectorize"),
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
    tree, run = ckpts.restore(kind)
  _check_fits(model, build.image_shape(cfg), tree["params"],
              workdir / "checkpoints" / kind / str(run.epoch))
  # Both kinds hold params (and batch_stats); `latest` also holds the optimizer state.
  variables = {"params": tree["params"]}
  if tree.get("batch_stats"):
    variables["batch_stats"] = tree["batch_stats"]
  shift, scale = run.norm
  return Predictor(model.apply, variables, build.preprocess(cfg, shift, scale, train=False),
                   cfg.ensemble.size,
                   # Runs trained before these options existed lack them.
                   cfg.ensemble.get("vectorize", "auto"), cfg.train.get("fast_cpu", True),
                   cfg.get("predict", {}).get("tta", 1), run)


def _check_fits(model: nn.Module, image_shape: tuple[int, int, int], params: dict,
                where: pathlib.Path) -> None:
  """Refuses parameters (stacked over members) of another architecture than `model`'s."""
  expected = jax.eval_shape(lambda key: models.init_variables(model, key, image_shape),
                            jax.random.key(0))["params"]
  layout = lambda tree: [(jax.tree_util.keystr(path), tuple(leaf.shape))
                         for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
  # The checkpoint's leaves carry a leading member axis.
  if [(path, shape[1:]) for path, shape in layout(params)] != layout(expected):
    raise UserError(f"{where}: checkpoint cannot be read (its parameters do not fit "
                    f"{type(model).__name__}); it is damaged or from another model: delete it, "
                    "or retrain")


@dataclasses.dataclass(frozen=True)
class Scores:
  """Validation loss and accuracy per member `(members,)`, and the ensemble's accuracy."""

  loss: np.ndarray
  accuracy: np.ndarray
  ensemble_accuracy: float | None  # When every member has the same validation images.


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Mean softmax cross-entropy over the last-but-one axis, in float64."""
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0].mean(-1)


def validation_scores(predictor: Predictor, split: build.Split,
                      batch_size: int = 1000) -> Scores:
  """Each member on its own validation rows (one view, no TTA), and the ensemble if shared."""
  shared = bool((split.val_idx == split.val_idx[0]).all())
  if shared:
    logits = predictor.member_logits(split.val.images, batch_size)
  else:
    logits = np.stack([predictor.member(m).member_logits(split.images[rows], batch_size)[0]
                       for m, rows in enumerate(split.val_idx)])
  labels = split.labels[split.val_idx]  # (members, n_val)
  accuracy = (logits.argmax(-1) == labels).mean(-1)
  ensemble = None
  if shared and predictor.members > 1:
    mean = np.asarray(jax.nn.softmax(logits)).mean(axis=0)
    ensemble = float((mean.argmax(-1) == split.val.labels).mean())
  return Scores(cross_entropy(logits, labels), accuracy, ensemble)
