"""Flax Linen CNNs chosen by name, and a model summary with parameters and FLOPs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dr_jax import config
from dr_jax.errors import UserError

POOLS = ("reshape", "reduce_window")


def _check_pool(method: str) -> None:
  config.check_choice("model.kwargs.pool", method, POOLS)


def max_pool_2x2(x: jax.Array, method: str = "reshape") -> jax.Array:
  """2×2 max-pooling with stride 2 on NHWC (odd edges dropped, like Keras' 'valid')."""
  _check_pool(method)
  if method == "reduce_window":
    return nn.max_pool(x, (2, 2), strides=(2, 2))
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  # XLA:CPU's backward of reduce_window (select-and-scatter) is slow; a plain max over
  # reshaped axes gives the same forward and a cheap gradient.
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def space_to_depth_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                        padding: str | Sequence[tuple[int, int]], lhs_dilation=None,
                        rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                        precision=None) -> jax.Array:
  """`lax.conv_general_dilated`, with stride-2 NHWC/HWIO convolutions done as stride-1 ones.

  The input's 2×2 blocks become channels and the k×k kernel a ⌈k/2⌉×⌈k/2⌉ one over them (zero
  taps where k is odd): the same sums, but XLA:CPU runs the gradient of a stride-1
  convolution much faster than that of a strided one. Anything else goes to lax unchanged.
  """
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  if (tuple(window_strides) != (2, 2) or feature_group_count != 1 or lhs.ndim != 4
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc
      or any(d != 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1))))):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision)
  spatial = lhs.shape[1:3]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(spatial, rhs.shape[:2], window_strides, padding)
  n, c, out_c = lhs.shape[0], lhs.shape[3], rhs.shape[3]
  taps = [-(-k // 2) for k in rhs.shape[:2]]  # Kernel size over 2×2 blocks.
  out = [(size + lo + hi - k) // 2 + 1 for size, (lo, hi), k in zip(spatial, padding, rhs.shape)]
  blocks = [o + t - 1 for o, t in zip(out, taps)]
  # Pad (or crop) each spatial axis to exactly the 2 × blocks rows/columns the output reads.
  x = jnp.pad(lhs, ((0, 0), *[(lo, max(0, 2 * b - size - lo))
                              for size, (lo, _), b in zip(spatial, padding, blocks)], (0, 0)))
  x = x[:, : 2 * blocks[0], : 2 * blocks[1]]
  x = x.reshape(n, blocks[0], 2, blocks[1], 2, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(n, blocks[0], blocks[1], 4 * c)
  w = jnp.pad(rhs, ((0, 2 * taps[0] - rhs.shape[0]), (0, 2 * taps[1] - rhs.shape[1]), (0, 0),
                    (0, 0)))
  w = w.reshape(taps[0], 2, taps[1], 2, c, out_c).transpose(0, 2, 1, 3, 4, 5)
  w = w.reshape(taps[0], taps[1], 4 * c, out_c)
  return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=nhwc,
                                  precision=precision)


class ClassicCNN(nn.Module):
  """The classic Kaggle recipe: [Conv5×5 ×2, pool, drop] → [Conv3×3 ×2, pool, drop] → Dense →
  one output per class."""

  widths: tuple[int, int] = (32, 64)
  dense: int = 256
  dropout_conv: float = 0.25
  dropout_dense: float = 0.5
  batch_norm: bool = False
  pool: str = "reshape"
  num_classes: int = 10
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _check_pool(self.pool)  # Also in inference, which pools with reduce_window whatever it says.
    x = x.astype(self.dtype)
    for width, kernel in zip(self.widths, (5, 3)):
      for _ in range(2):
        x = nn.Conv(width, (kernel, kernel), padding="SAME", use_bias=not self.batch_norm,
                    dtype=self.dtype)(x)
        if self.batch_norm:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.99, dtype=self.dtype)(x)
        x = nn.relu(x)
      # Inference takes no gradient, and there reduce_window's forward is the faster one.
      x = max_pool_2x2(x, self.pool if train else "reduce_window")
      x = nn.Dropout(self.dropout_conv, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_dense, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class StridedCNN(nn.Module):
  """The 99.75% Kaggle ensemble member: 3×3 convs + batch-norm, 5×5 stride-2 convs for pooling."""

  widths: tuple[int, int, int] = (32, 64, 128)
  dropout: float = 0.4
  space_to_depth: bool = True  # On CPU, train stride-2 convs as stride-1 ones: see below.
  batch_norm: bool = True  # False: the ablation without it (the seed recipe's CNN has none).
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    # The reformulation's gradient is the faster one on XLA:CPU (training 1,700 vs 1,300
    # images/s); its forward is the slower one (predict 7,000 vs 9,100), so inference keeps lax's.
    # Accelerators' strided convolutions were never slow, so they keep lax's too.
    fast = self.space_to_depth and train and jax.default_backend() == "cpu"
    conv_fn = space_to_depth_conv if fast else None

    def conv_bn(x: jax.Array, width: int, kernel: int, stride: int = 1,
                padding: str = "VALID") -> jax.Array:
      x = nn.Conv(width, (kernel, kernel), strides=stride, padding=padding, dtype=self.dtype,
                  conv_general_dilated=conv_fn)(x)
      x = nn.relu(x)
      if not self.batch_norm:
        return x
      return nn.BatchNorm(use_running_average=not train, momentum=0.99, dtype=self.dtype)(x)

    for width in self.widths[:2]:
      x = conv_bn(x, width, 3)
      x = conv_bn(x, width, 3)
      x = conv_bn(x, width, 5, stride=2, padding="SAME")
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = conv_bn(x, self.widths[2], 4)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class ResidualCNN(nn.Module):
  """A small ResNet: per stage a 3×3 conv to its width and residual blocks of two 3×3 convs
  (batch-norm after each), 2×2 max-pooling between stages, global average pooling → Dense."""

  widths: tuple[int, ...] = (32, 64, 128)
  blocks: int = 1  # Residual blocks per stage.
  dropout: float = 0.25  # Before the output layer.
  pool: str = "reshape"
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _check_pool(self.pool)
    x = x.astype(self.dtype)

    def conv_bn(x: jax.Array, width: int) -> jax.Array:
      x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
      return nn.BatchNorm(use_running_average=not train, momentum=0.99, dtype=self.dtype)(x)

    for stage, width in enumerate(self.widths):
      if stage:
        x = max_pool_2x2(x, self.pool if train else "reduce_window")
      x = nn.relu(conv_bn(x, width))
      for _ in range(self.blocks):
        x = nn.relu(x + conv_bn(nn.relu(conv_bn(x, width)), width))
    if 0 in x.shape[1:3]:  # The mean of nothing is NaN, not an error: check_input needs one.
      raise ValueError(f"{len(self.widths) - 1} poolings shrink the images to {x.shape[1:3]}")
    x = x.mean(axis=(1, 2))  # Global average pooling: any image size gives one vector.
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


# The names are config.MODELS (which config.check validates), in its order.
MODELS: dict[str, type[nn.Module]] = dict(zip(config.MODELS, (ClassicCNN, StridedCNN, ResidualCNN),
                                               strict=True))
_DTYPES = {name: getattr(jnp, name) for name in config.DTYPES}


def check_options(name: str, kwargs: dict[str, Any]) -> None:
  """Raises a one-line UserError for an unknown model or an option it does not take."""
  config.check_value("model.name", name)
  # num_classes follows the data (build.model), dtype is model.dtype.
  fields = set(MODELS[name].__dataclass_fields__) - {"parent", "name", "num_classes"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise UserError(f"model {name!r} has no option(s) {', '.join(unknown)}; it takes "
                    f"{', '.join(sorted(fields - {'dtype'}))}")
  if "pool" in kwargs:
    _check_pool(kwargs["pool"])


def create_model(name: str, dtype: str = "float32", num_classes: int = 10,
                 **kwargs: Any) -> nn.Module:
  """Builds a registered model by name; the config's model section supplies `kwargs`."""
  check_options(name, kwargs)
  config.check_value("model.dtype", dtype)
  return MODELS[name](dtype=_DTYPES[dtype], num_classes=num_classes, **kwargs)


def init_variables(model: nn.Module, key: jax.Array,
                   image_shape: tuple[int, int, int] = (28, 28, 1)) -> Mapping[str, Any]:
  """Initialises parameters (and batch statistics) for inputs of `image_shape`."""
  return model.init({"params": key}, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def check_input(model: nn.Module, image_shape: tuple[int, int, int]) -> None:
  """Refuses images a model's layers would shrink to nothing (e.g. the strided CNN under 25×25)."""
  try:
    jax.eval_shape(lambda key: init_variables(model, key, image_shape), jax.random.key(0))
  except (ZeroDivisionError, ValueError, TypeError) as e:  # What flax and lax raise for empty maps.
    height, width, channels = image_shape
    raise UserError(f"model {type(model).__name__} cannot take {height}×{width}×{channels} "
                    f"images ({type(e).__name__}: its layers shrink them to nothing); the "
                    "classic and residual CNNs take images from 4×4, the strided one from "
                    "25×25") from None


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter pytree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def summary(model: nn.Module, image_shape: tuple[int, int, int] = (28, 28, 1)) -> str:
  """Layer table with output shapes, parameter counts and FLOPs (like Keras' `model.summary()`)."""
  table = nn.tabulate(model, jax.random.key(0), compute_flops=True, compute_vjp_flops=True,
                      console_kwargs={"width": 140, "force_terminal": False})
  return table(jnp.zeros((1, *image_shape), jnp.float32), train=False)
