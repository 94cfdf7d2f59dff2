"""Tests of dr_jax.models: shapes, parameter counts, pooling equivalence, summary, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from dr_jax import config, models
from dr_jax.errors import UserError


def _x(n=3):
  return jax.random.uniform(jax.random.key(0), (n, 28, 28, 1))


def test_classic_has_the_recipes_887530_parameters():
  model = models.create_model("classic")
  assert models.count_params(models.init_variables(model, jax.random.key(0))["params"]) == 887_530


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_logits_shape_dtype_finite(name, jit, train):
  model = models.create_model(name)
  variables = models.init_variables(model, jax.random.key(0))

  def fn(v, x):
    return model.apply(v, x, train=train, rngs={"dropout": jax.random.key(1)},
                       mutable=["batch_stats"] if train and "batch_stats" in v else False)

  out = (jax.jit(fn) if jit else fn)(variables, _x())
  logits = out[0] if isinstance(out, tuple) else out
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
  model = models.create_model("classic")
  v = models.init_variables(model, jax.random.key(0))
  a = model.apply(v, _x(), train=False)
  np.testing.assert_array_equal(a, model.apply(v, _x(), train=False))
  t1 = model.apply(v, _x(), train=True, rngs={"dropout": jax.random.key(1)})
  t2 = model.apply(v, _x(), train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(t1, t2)


def test_batch_norm_option_adds_statistics():
  model = models.create_model("classic", batch_norm=True)
  v = models.init_variables(model, jax.random.key(0))
  assert "batch_stats" in v
  _, updates = model.apply(v, _x(), train=True, rngs={"dropout": jax.random.key(1)},
                           mutable=["batch_stats"])
  assert "batch_stats" in updates


def test_strided_model_without_batch_norm_has_no_statistics_and_trains():
  """The ablation's switch: no batch_stats, each conv's 2 × width BatchNorm parameters gone."""
  with_bn = models.create_model("strided", widths=(8, 16, 32))
  without = models.create_model("strided", widths=(8, 16, 32), batch_norm=False)
  v_with = models.init_variables(with_bn, jax.random.key(0))
  v = models.init_variables(without, jax.random.key(0))
  assert "batch_stats" in v_with and "batch_stats" not in v
  # Seven conv_bn layers: three at 8, three at 16, one at 32 channels; scale and bias each.
  assert (models.count_params(v_with["params"]) - models.count_params(v["params"])
          == 2 * (3 * 8 + 3 * 16 + 32))
  logits = without.apply(v, _x(), train=True, rngs={"dropout": jax.random.key(1)})
  assert logits.shape == (3, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_configurable_widths_change_parameter_count():
  small = models.create_model("classic", widths=(8, 16), dense=32)
  assert models.count_params(models.init_variables(small, jax.random.key(0))["params"]) < 100_000


@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (1, 14, 14, 5), (2, 7, 7, 2)])
def test_reshape_pool_equals_reduce_window_forward_and_gradient(shape):
  """The fast pooling must match nn.max_pool exactly (forward) and in its gradient (no ties)."""
  x = jax.random.normal(jax.random.key(0), shape)
  fast = models.max_pool_2x2(x, "reshape")
  plain = models.max_pool_2x2(x, "reduce_window")
  np.testing.assert_array_equal(fast, plain)
  w = jax.random.normal(jax.random.key(1), plain.shape)
  g_fast = jax.grad(lambda x: jnp.sum(models.max_pool_2x2(x, "reshape") * w))(x)
  g_plain = jax.grad(lambda x: jnp.sum(models.max_pool_2x2(x, "reduce_window") * w))(x)
  np.testing.assert_allclose(g_fast, g_plain, atol=1e-6)


def test_fast_and_plain_models_agree():
  """Training forward and parameter gradients: reshape pooling vs reduce_window pooling."""
  fast, plain = models.create_model("classic"), models.create_model("classic", pool="reduce_window")
  v = models.init_variables(fast, jax.random.key(0))
  x = _x(4)
  # Training mode (the same dropout key): inference pools with reduce_window in both.
  apply = lambda m, p: m.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(3)})
  np.testing.assert_allclose(apply(fast, v["params"]), apply(plain, v["params"]), rtol=1e-5,
                             atol=1e-5)
  loss = lambda m: lambda p: jnp.sum(apply(m, p) ** 2)
  g1, g2 = jax.grad(loss(fast))(v["params"]), jax.grad(loss(plain))(v["params"])
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_inference_pools_with_reduce_window_whatever_the_training_pool():
  fast, plain = models.create_model("classic"), models.create_model("classic", pool="reduce_window")
  v = models.init_variables(fast, jax.random.key(0))
  hlo = lambda m: jax.jit(lambda x: m.apply(v, x)).lower(_x(2)).as_text()
  assert "reduce_window" in hlo(fast) and hlo(fast) == hlo(plain)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.create_model("classic", dtype="bfloat16")
  v = models.init_variables(model, jax.random.key(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
  f32 = models.create_model("classic").apply(v, _x())
  bf16 = model.apply(v, _x())
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, f32, atol=0.05)


def test_summary_lists_layers_parameters_and_flops():
  text = models.summary(models.create_model("classic"))
  assert "887,530" in text and "Conv_0" in text and "Dense_1" in text and "flops" in text.lower()


@pytest.mark.parametrize("kwargs,fragment", [
    ({"name": "resnet"}, "model.name='resnet'"), ({"name": "classic", "dtype": "fp8"}, "fp8"),
    ({"name": "classic", "widths_typo": (1, 2)}, "widths_typo"),
    ({"name": "classic", "pool": "avg"}, "model.kwargs.pool='avg'")])
def test_bad_model_options_are_user_errors(kwargs, fragment):
  with pytest.raises(UserError, match=fragment) as info:
    models.create_model(**kwargs)
  assert "\n" not in str(info.value)


def test_registry_covers_the_config_names_with_the_right_modules():
  assert tuple(models.MODELS) == config.MODELS
  assert models.MODELS["classic"] is models.ClassicCNN
  assert models.MODELS["strided"] is models.StridedCNN
  assert models.MODELS["residual"] is models.ResidualCNN
  for dtype in config.DTYPES:
    assert models.create_model("classic", dtype).dtype == jnp.dtype(dtype)


def _check_space_to_depth(size: int, kernel: int, channels: int, padding) -> None:
  """Stride-2 convolution as a stride-1 one over 2×2 blocks: same outputs and gradients."""
  keys = jax.random.split(jax.random.key(size * 100 + kernel), 3)
  x = jax.random.normal(keys[0], (2, size, size + 1, channels))
  w = jax.random.normal(keys[1], (kernel, kernel, channels, 3))
  args = ((2, 2), padding)
  dn = ("NHWC", "HWIO", "NHWC")
  plain = lambda x, w: lax.conv_general_dilated(x, w, *args, dimension_numbers=dn)
  fast = lambda x, w: models.space_to_depth_conv(x, w, *args, dimension_numbers=dn)
  np.testing.assert_allclose(fast(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(keys[2], plain(x, w).shape)
  vjp = lambda f: jax.vjp(f, x, w)[1](g)
  for a, b in zip(vjp(fast), vjp(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


# Odd and even sizes, even and odd kernels, each padding kind: the fast tier's fixed cases.
@pytest.mark.parametrize("size,kernel,channels,padding", [
    (14, 5, 1, "SAME"), (7, 4, 3, "VALID"), (9, 3, 2, ((1, 2), (2, 1))),
    (6, 2, 1, ((0, 0), (3, 0)))])
def test_space_to_depth_conv_equals_strided_conv(size, kernel, channels, padding):
  _check_space_to_depth(size, kernel, channels, padding)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(size=st.integers(5, 16), kernel=st.integers(1, 6), channels=st.integers(1, 4),
       padding=st.sampled_from(["SAME", "VALID", ((1, 2), (2, 1)), ((0, 0), (3, 0))]))
def test_space_to_depth_conv_equals_strided_conv_for_any_shape(size, kernel, channels, padding):
  assume(padding != "VALID" or size >= kernel)
  _check_space_to_depth(size, kernel, channels, padding)


def test_space_to_depth_conv_leaves_other_convolutions_to_lax():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  dn = ("NHWC", "HWIO", "NHWC")
  for strides in ((1, 1), (3, 3), (2, 1)):
    np.testing.assert_array_equal(
        models.space_to_depth_conv(x, w, strides, "SAME", dimension_numbers=dn),
        lax.conv_general_dilated(x, w, strides, "SAME", dimension_numbers=dn))


def test_strided_model_is_the_same_function_with_either_convolution():
  """Training (where space_to_depth applies) gives the same logits and gradients."""
  fast = models.create_model("strided")
  plain = models.create_model("strided", space_to_depth=False)
  v = models.init_variables(fast, jax.random.key(0))
  w = models.init_variables(plain, jax.random.key(0))
  assert jax.tree.structure(v) == jax.tree.structure(w)

  def logits(m, p):
    return m.apply({**v, "params": p}, _x(), train=True, rngs={"dropout": jax.random.key(1)},
                   mutable=["batch_stats"])[0]

  loss = lambda m: lambda p: jnp.sum(logits(m, p) ** 2)
  np.testing.assert_allclose(logits(fast, v["params"]), logits(plain, v["params"]), rtol=1e-5,
                             atol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.grad(loss(fast))(v["params"])),
                  jax.tree.leaves(jax.grad(loss(plain))(v["params"]))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("shape, classes", [((32, 32, 1), 24), ((28, 28, 3), 2), ((40, 36, 1), 10)])
def test_the_models_follow_the_images_and_the_classes(name, shape, classes):
  model = models.create_model(name, num_classes=classes)
  variables = models.init_variables(model, jax.random.key(0), shape)
  logits = model.apply(variables, jnp.zeros((2, *shape)), train=False)
  assert logits.shape == (2, classes)
  assert f"float32[1,{classes}]" in models.summary(model, shape)


def test_images_a_model_shrinks_to_nothing_are_refused():
  models.check_input(models.create_model("strided"), (25, 25, 1))
  models.check_input(models.create_model("classic"), (4, 4, 1))
  models.check_input(models.create_model("residual"), (4, 4, 1))
  for name, side, error in (("strided", 24, "ZeroDivisionError"),
                            ("classic", 3, "ZeroDivisionError"), ("residual", 3, "ValueError")):
    with pytest.raises(UserError) as info:
      models.check_input(models.create_model(name), (side, side, 1))
    assert str(info.value).endswith(
        f"cannot take {side}×{side}×1 images ({error}: its layers shrink them to nothing); the "
        "classic and residual CNNs take images from 4×4, the strided one from 25×25")



def test_residual_has_the_hand_counted_parameters():
  # Per stage: a 3×3 conv to width w (no bias, batch-norm scale and bias) and a block of two
  # w→w ones; then Dense(64 → 10).
  def stage(w_in, w):
    return 9 * w_in * w + 2 * w + 2 * (9 * w * w + 2 * w)

  expected = stage(1, 16) + stage(16, 32) + stage(32, 64) + 64 * 10 + 10
  model = models.create_model("residual", widths=(16, 32, 64))
  params = models.init_variables(model, jax.random.key(0))["params"]
  assert models.count_params(params) == expected == 121_274


def test_a_residual_block_whose_branch_is_zeroed_is_the_identity():
  """With each block's last batch-norm scale and bias at 0 the model is its blocks=0 self."""
  deep = models.create_model("residual", widths=(4, 8), blocks=1, dropout=0.0)
  flat = models.create_model("residual", widths=(4, 8), blocks=0, dropout=0.0)
  v = models.init_variables(deep, jax.random.key(0))
  v = jax.tree.map(lambda x: x, dict(v))  # A mutable copy.
  params, stats = dict(v["params"]), dict(v["batch_stats"])
  for last_bn in ("BatchNorm_2", "BatchNorm_5"):  # Stage convs are layers 0 and 3.
    params[last_bn] = jax.tree.map(jnp.zeros_like, params[last_bn])
  rename = {"Conv_0": "Conv_0", "BatchNorm_0": "BatchNorm_0", "Conv_3": "Conv_1",
            "BatchNorm_3": "BatchNorm_1", "Dense_0": "Dense_0"}
  flat_v = {"params": {new: params[old] for old, new in rename.items()},
            "batch_stats": {new: stats[old] for old, new in rename.items() if old in stats}}
  x = _x()
  np.testing.assert_allclose(deep.apply({"params": params, "batch_stats": stats}, x),
                             flat.apply(flat_v, x), rtol=1e-6, atol=1e-6)
  # And the branch counts when it is not zeroed.
  assert not np.allclose(deep.apply(v, x), flat.apply(flat_v, x), atol=1e-3)

def test_num_classes_is_not_a_model_option():
  with pytest.raises(UserError, match="has no option"):
    models.check_options("classic", {"num_classes": 3})
