"""Pure compute: the train state, loss, the jitted train step and batched inference logits."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from dr_jax import augment, data, models


class TrainState(train_state.TrainState):
  """Flax's TrainState plus batch-norm statistics (an empty dict when the model has none) and,
  with `ema_decay` > 0, an exponential moving average of the parameters."""

  batch_stats: Any = None
  ema_params: Any = None
  ema_decay: float = struct.field(pytree_node=False, default=0.0)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Static description of what happens to uint8 pixels before the model sees them (and, in
  training, to the one-hot targets)."""

  augment: augment.AugmentConfig = augment.AugmentConfig()
  shift: float = 0.0
  scale: float = 255.0
  label_smoothing: float = 0.0  # Targets (1 - a) * one_hot + a / classes.


def create_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                 image_shape: tuple[int, int, int] = (28, 28, 1),
                 ema_decay: float = 0.0) -> TrainState:
  """Initialises parameters, batch statistics, optimizer state (and the parameters' average,
  starting at the initial parameters) from `key`."""
  initial = models.init_variables(model, key, image_shape)
  params = initial["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=initial.get("batch_stats", {}),
                           ema_params=jax.tree.map(jnp.copy, params) if ema_decay else None,
                           ema_decay=ema_decay)


def variables(state: TrainState, params: Any = None) -> dict:
  """The model variables: `params` (default: the state's) and batch statistics if it has them."""
  params = state.params if params is None else params
  return {"params": params, "batch_stats": state.batch_stats} if state.batch_stats else \
      {"params": params}


def eval_variables(state: TrainState) -> dict:
  """The variables validation and the best checkpoint use: the parameters' average when the
  run keeps one (with the live batch statistics), else the parameters."""
  return variables(state, state.ema_params if state.ema_decay else None)


def train_step(state: TrainState, images: jax.Array, targets: jax.Array, key: jax.Array,
               preprocess: Preprocess) -> tuple[TrainState, dict[str, jax.Array]]:
  """One RMSprop (or configured) update on a uint8 batch; augmentation happens here, on device."""
  aug_key, dropout_key = jax.random.split(key)
  x = augment.random_affine(aug_key, images.astype(jnp.float32), preprocess.augment)
  x = data.normalize(x, preprocess.shift, preprocess.scale)
  has_bn = bool(state.batch_stats)

  def loss_fn(params):
    out = state.apply_fn(variables(state, params), x, train=True, rngs={"dropout": dropout_key},
                         mutable=["batch_stats"] if has_bn else False)
    logits, updates = out if has_bn else (out, {})
    smoothed = optax.smooth_labels(targets, preprocess.label_smoothing) \
        if preprocess.label_smoothing else targets
    loss = optax.softmax_cross_entropy(logits, smoothed).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  if state.ema_decay:
    d = state.ema_decay
    state = state.replace(ema_params=jax.tree.map(lambda e, p: d * e + (1 - d) * p,
                                                  state.ema_params, state.params))
  if has_bn:
    state = state.replace(batch_stats=updates["batch_stats"])
  correct = jnp.sum(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
  return state, {"loss": loss * len(images), "correct": correct, "count": len(images)}


def train_steps(state: TrainState, images: jax.Array, targets: jax.Array, batch_idx: jax.Array,
                keys: jax.Array, preprocess: Preprocess) -> tuple[TrainState, dict[str, jax.Array]]:
  """`len(batch_idx)` train steps in one call, gathering batches from device-resident arrays.

  A Python loop, i.e. fully unrolled: inside a rolled `lax.scan` (and even an "unrolled" scan of
  length 1, measured 55x slower) XLA:CPU emits the backward convolutions as slow loops.
  """
  totals = None
  for i in range(batch_idx.shape[0]):
    idx = batch_idx[i]
    state, metrics = train_step(state, images[idx], targets[idx], keys[i], preprocess)
    totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
  assert totals is not None, "train_steps needs at least one batch"
  return state, totals


def logits_fn(apply_fn: Callable, variables: dict, images: jax.Array,
              preprocess: Preprocess) -> jax.Array:
  """Inference logits for a uint8 batch (no augmentation, dropout off, running BN stats)."""
  x = data.normalize(images, preprocess.shift, preprocess.scale)
  return apply_fn(variables, x, train=False)


def batches(n: int, batch_size: int) -> tuple[int, int]:
  """Returns (padded size, number of batches) covering `n` rows with equal-sized batches."""
  count = max(1, -(-n // batch_size))
  return count * batch_size, count


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 with zeros up to `size` rows, so every batch has the same shape (one compile)."""
  return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)]) \
      if size > len(array) else array


@functools.partial(jax.jit, static_argnames=("apply_fn", "preprocess"))
def batched_logits(apply_fn: Callable, variables: dict, stacked: jax.Array,
                   preprocess: Preprocess) -> jax.Array:
  """Logits `(n, 10)` for images stacked as `(batches, batch, 28, 28, 1)`, a batch at a time.

  Stacked by the caller so the batch axis can already be split across devices.
  """
  logits = jax.lax.map(lambda x: logits_fn(apply_fn, variables, x, preprocess), stacked)
  return logits.reshape((-1, logits.shape[-1]))
