"""Tests of dr_jax.steps: the jitted train/eval steps and batched inference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dr_jax import augment, build, config, data, optim, steps

PRE = steps.Preprocess(augment.AugmentConfig(rotation=10, zoom=0.1, shift=0.1), 0.0, 255.0)


def _setup(batch_norm=False, n=64):
  cfg = config.get_base_config()
  cfg.model.kwargs.batch_norm = batch_norm
  model = build.model(cfg)
  state = steps.create_state(model, optim.make_optimizer(cfg, 100), jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8))
  targets = jnp.asarray(data.one_hot(rng.integers(0, 10, n), 10))
  return state, images, targets


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_train_step_updates_params_and_returns_finite_metrics(jit, batch_norm):
  state, images, targets = _setup(batch_norm)
  fn = functools.partial(steps.train_step, preprocess=PRE)
  fn = jax.jit(fn) if jit else fn
  new, metrics = fn(state, images[:8], targets[:8], jax.random.key(1))
  assert int(new.step) == 1
  assert np.isfinite(float(metrics["loss"])) and int(metrics["count"]) == 8
  assert 0 <= int(metrics["correct"]) <= 8
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
  assert all(jax.tree.leaves(changed))
  if batch_norm:
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                            state.batch_stats, new.batch_stats)))


# Mean cross-entropy of the first step (seed 0 init, key 42, fixed synthetic batch of 16).
GOLDEN_LOSS = 2.3775840


def test_golden_first_step_loss():
  """Guards init, augmentation, dropout and loss against silent drift.

  If you changed any of those on purpose, update the value to the new one printed here.
  """
  state, images, targets = _setup()
  _, metrics = jax.jit(functools.partial(steps.train_step, preprocess=PRE))(
      state, images[:16], targets[:16], jax.random.key(42))
  loss = float(metrics["loss"]) / 16
  assert loss == pytest.approx(GOLDEN_LOSS, rel=1e-4), f"first-step loss is now {loss!r}"


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_is_cross_entropy_against_smoothed_targets(smoothing):
  """The loss is computed by hand from the logits the same step sees (no augmentation/dropout
  to keep the logits reproducible outside it)."""
  cfg = config.get_base_config()
  cfg.model.kwargs.dropout_conv = cfg.model.kwargs.dropout_dense = 0.0
  state = steps.create_state(build.model(cfg), optim.make_optimizer(cfg, 100), jax.random.key(0))
  _, images, targets = _setup()
  plain = steps.Preprocess(augment.AugmentConfig(), 0.0, 255.0)
  smooth = steps.Preprocess(augment.AugmentConfig(), 0.0, 255.0, smoothing)
  logits = steps.logits_fn(state.apply_fn, steps.variables(state), images[:8], plain)
  log_p = np.asarray(jax.nn.log_softmax(logits), np.float64)
  y = np.asarray(targets[:8], np.float64)
  by_hand = -np.mean(np.sum(((1 - smoothing) * y + smoothing / 10) * log_p, axis=1))
  _, metrics = steps.train_step(state, images[:8], targets[:8], jax.random.key(1), smooth)
  assert float(metrics["loss"]) / 8 == pytest.approx(by_hand, rel=1e-5)
  _, unsmoothed = steps.train_step(state, images[:8], targets[:8], jax.random.key(1), plain)
  assert float(unsmoothed["loss"]) / 8 == pytest.approx(-np.mean(np.sum(y * log_p, 1)), rel=1e-5)
  assert int(metrics["correct"]) == int(unsmoothed["correct"])  # Accuracy reads the true labels.


def test_preprocess_smooths_labels_in_training_only():
  cfg = config.apply_overrides(config.get_base_config(), ["train.label_smoothing=0.1"])
  assert build.preprocess(cfg, 0.0, 255.0, train=True).label_smoothing == 0.1
  assert build.preprocess(cfg, 0.0, 255.0, train=False).label_smoothing == 0.0


def test_the_parameters_average_moves_by_one_minus_decay_each_step():
  cfg = config.get_base_config()
  state = steps.create_state(build.model(cfg), optim.make_optimizer(cfg, 100), jax.random.key(0),
                             ema_decay=0.9)
  _, images, targets = _setup()
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)
  step = jax.jit(functools.partial(steps.train_step, preprocess=PRE))
  one, _ = step(state, images[:8], targets[:8], jax.random.key(1))
  two, _ = step(one, images[8:16], targets[8:16], jax.random.key(2))
  by_hand = jax.tree.map(lambda p0, p1, p2: 0.9 * (0.9 * p0 + 0.1 * p1) + 0.1 * p2,
                         state.params, one.params, two.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               two.ema_params, by_hand)
  assert steps.eval_variables(two)["params"] is two.ema_params
  # Off: no average is kept, and validation reads the parameters.
  plain = steps.create_state(build.model(cfg), optim.make_optimizer(cfg, 100), jax.random.key(0))
  assert plain.ema_params is None
  assert steps.eval_variables(plain)["params"] is plain.params


def test_fused_steps_equal_sequential_steps():
  state, images, targets = _setup()
  idx = jnp.arange(24, dtype=jnp.int32).reshape(3, 8)
  keys = jax.random.split(jax.random.key(3), 3)
  fused, fused_metrics = jax.jit(functools.partial(steps.train_steps, preprocess=PRE))(
      state, images, targets, idx, keys)
  seq, total = state, 0.0
  step = jax.jit(functools.partial(steps.train_step, preprocess=PRE))
  for i in range(3):
    seq, m = step(seq, images[idx[i]], targets[idx[i]], keys[i])
    total += float(m["loss"])
  for a, b in zip(jax.tree.leaves(fused.params), jax.tree.leaves(seq.params)):
    # Not bitwise: the fused program may sum in another order (GPUs differ by ~1e-5 relative).
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert float(fused_metrics["loss"]) == pytest.approx(total, rel=1e-5)
  assert int(fused_metrics["count"]) == 24


def test_batched_logits_match_direct_apply_and_skip_augmentation():
  state, images, _ = _setup()
  variables = {"params": state.params}
  pre = steps.Preprocess(shift=0.0, scale=255.0)
  direct = state.apply_fn(variables, data.normalize(images, 0.0, 255.0), train=False)
  stacked = images.reshape((-1, 16, *images.shape[1:]))
  batched = steps.batched_logits(state.apply_fn, variables, stacked, pre)
  np.testing.assert_allclose(batched, direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,batch,expected", [(10, 4, (12, 3)), (8, 4, (8, 2)), (1, 4, (4, 1)),
                                              (0, 4, (4, 1))])
def test_batches(n, batch, expected):
  assert steps.batches(n, batch) == expected


def test_pad_rows():
  a = np.arange(6).reshape(3, 2)
  padded = steps.pad_rows(a, 5)
  assert padded.shape == (5, 2) and (padded[3:] == 0).all() and (padded[:3] == a).all()
  assert steps.pad_rows(a, 3) is a
