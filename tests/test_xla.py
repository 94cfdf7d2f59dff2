"""The XLA:CPU fast path must compute what the plain compiler does (forward and gradients)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dr_jax import config, data, optim, steps, train, xla


def test_fast_options_only_on_cpu_and_only_when_enabled():
  assert xla.train_compiler_options(False) is None
  expected = xla.FAST_CPU_OPTIONS if jax.default_backend() == "cpu" else None
  assert xla.train_compiler_options(True) == expected


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are XLA:CPU's")
def test_fast_cpu_step_equals_plain_step():
  """Loss, logits' gradients and updated parameters agree within float32 reassociation."""
  cfg = config.get_base_config()
  model = train.build_model(cfg)
  state = steps.create_state(model, optim.make_optimizer(cfg, 10), jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8))
  targets = jnp.asarray(data.one_hot(rng.integers(0, 10, 16)))
  step = functools.partial(steps.train_step, pre=steps.Preprocess())
  outs = {}
  for name, options in (("plain", None), ("fast", xla.FAST_CPU_OPTIONS)):
    fn = jax.jit(step, compiler_options=options)
    outs[name] = fn(state, images, targets, jax.random.key(1))
  (plain, m_plain), (fast, m_fast) = outs["plain"], outs["fast"]
  assert float(m_fast["loss"]) == pytest.approx(float(m_plain["loss"]), rel=1e-5)
  for a, b in zip(jax.tree.leaves(fast.params), jax.tree.leaves(plain.params)):
    # RMSprop's first step is lr * g / sqrt(0.1 g^2 + eps): compare the updates, scaled by lr.
    np.testing.assert_allclose(a, b, atol=cfg.optimizer.lr * 1e-2)
  grad = lambda options: jax.jit(jax.grad(
      lambda p: jnp.sum(model.apply({"params": p}, images / 255.0) ** 2)),
      compiler_options=options)(state.params)
  for a, b in zip(jax.tree.leaves(grad(xla.FAST_CPU_OPTIONS)), jax.tree.leaves(grad(None))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
