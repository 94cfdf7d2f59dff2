"""Pure, jittable, vmappable random augmentation: rotation, zoom, shift, optional flip, and
elastic distortion, all in one bilinear sampling pass."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dr_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Ranges of the random transforms; all zero (and no flip) means identity."""

  rotation: float = 0.0  # Max rotation in degrees, sampled uniformly in [-r, r].
  zoom: float = 0.0  # Per-axis zoom factor sampled in [1 - z, 1 + z] (Keras' zoom_range).
  shift: float = 0.0  # Max shift as a fraction of height/width.
  flip: bool = False  # Horizontal flip, probability 1/2 (a flipped 2 is no digit: ablation only).
  # Elastic distortion (Simard et al. 2003): a uniform [-1, 1] displacement per pixel, smoothed by
  # a Gaussian of width sigma pixels, times alpha pixels; 0 = off.
  elastic_alpha: float = 0.0
  elastic_sigma: float = 4.0

  @property
  def is_identity(self) -> bool:
    return self.rotation == 0 and self.zoom == 0 and self.shift == 0 and not self.flip and \
        self.elastic_alpha == 0


def affine_matrices(theta: jax.Array, zoom: jax.Array, shift: jax.Array, flip: jax.Array,
                    height: int, width: int) -> jax.Array:
  """`(n, 2, 3)` inverse maps (output → input pixel) about the centre.

  theta `(n,)` radians, zoom `(n, 2)` per-axis factors, shift `(n, 2)` pixels, flip `(n,)` ±1.
  """
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # Each output pixel looks up where it came from (rotate, then zoom, then flip).
  linear = jnp.stack([jnp.stack([cos * zoom[:, 0], -sin * zoom[:, 1] * flip], -1),
                      jnp.stack([sin * zoom[:, 0], cos * zoom[:, 1] * flip], -1)], -2)
  center = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
  offset = center - linear @ center - shift
  return jnp.concatenate([linear, offset[..., None]], axis=-1)


def random_matrices(key: jax.Array, n: int, cfg: AugmentConfig, height: int,
                    width: int) -> jax.Array:
  """Samples `(n, 2, 3)` random inverse maps within the ranges of `cfg`."""
  k_rot, k_zoom, k_shift, k_flip = jax.random.split(key, 4)
  theta = jnp.deg2rad(jax.random.uniform(k_rot, (n,), minval=-cfg.rotation, maxval=cfg.rotation))
  zoom = jax.random.uniform(k_zoom, (n, 2), minval=1 - cfg.zoom, maxval=1 + cfg.zoom)
  shift = jax.random.uniform(k_shift, (n, 2), minval=-cfg.shift, maxval=cfg.shift)
  shift = shift * jnp.array([height, width], jnp.float32)
  flip = jnp.where(cfg.flip & jax.random.bernoulli(k_flip, 0.5, (n,)), -1.0, 1.0)
  return affine_matrices(theta, zoom, shift, flip, height, width)


# Test-time augmentation: identity first, then one-pixel shifts, small rotations, zooms.
# (degrees, zoom, row shift, column shift)
TTA_TRANSFORMS = ((0, 1.0, 0, 0), (0, 1.0, 1, 0), (0, 1.0, -1, 0), (0, 1.0, 0, 1), (0, 1.0, 0, -1),
                  (8, 1.0, 0, 0), (-8, 1.0, 0, 0), (0, 0.95, 0, 0), (0, 1.05, 0, 0))


def check_tta(count: int, name: str) -> None:
  """`count` test-time transforms must be 1..len(TTA_TRANSFORMS); `name` says where it came from."""
  if not 1 <= count <= len(TTA_TRANSFORMS):
    raise UserError(f"{name}: choose 1 (no test-time augmentation) to {len(TTA_TRANSFORMS)}")


def tta_matrices(count: int, height: int = 28, width: int = 28) -> jax.Array:
  """The first `count` deterministic test-time transforms as `(count, 2, 3)` inverse maps."""
  chosen = jnp.array(TTA_TRANSFORMS[:count], jnp.float32)
  return affine_matrices(jnp.deg2rad(chosen[:, 0]), jnp.stack([chosen[:, 1]] * 2, -1),
                         chosen[:, 2:], jnp.ones(len(chosen)), height, width)


def gaussian_matrix(size: int, sigma: float) -> jax.Array:
  """`(size, size)` matrix that smooths a vector by a normalised Gaussian (truncated at 3σ,
  zeros beyond the edges): `M @ v` is `scipy.ndimage.gaussian_filter1d(v, σ, mode="constant")`."""
  radius = int(3 * sigma + 0.5)
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1, dtype=jnp.float32) / sigma) ** 2)
  taps = taps / taps.sum()
  offset = jnp.arange(size)[:, None] - jnp.arange(size)[None, :]
  return jnp.where(jnp.abs(offset) <= radius, taps[jnp.clip(offset + radius, 0, 2 * radius)], 0.0)


def elastic_field(key: jax.Array, height: int, width: int, alpha: float,
                  sigma: float) -> jax.Array:
  """A `(height, width, 2)` displacement in pixels (rows, columns): uniform noise smoothed by a
  Gaussian of width `sigma`, times `alpha`; every value lies in [-alpha, alpha]."""
  noise = jax.random.uniform(key, (2, height, width), minval=-1.0, maxval=1.0)
  rows, cols = gaussian_matrix(height, sigma), gaussian_matrix(width, sigma)
  # Separable smoothing as two matrix products: rows @ noise @ colsᵀ per component.
  smooth = jnp.einsum("ij,cjk,lk->cil", rows, noise, cols)
  return alpha * jnp.moveaxis(smooth, 0, -1)


def warp(image: jax.Array, matrix: jax.Array, displacement: jax.Array | None = None) -> jax.Array:
  """Bilinear resampling of one `(H, W, C)` image by a `(2, 3)` inverse map, plus an optional
  `(H, W, 2)` displacement of each source position (rows, columns); zeros outside."""
  height, width = image.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  src_r = matrix[0, 0] * rows + matrix[0, 1] * cols + matrix[0, 2]
  src_c = matrix[1, 0] * rows + matrix[1, 1] * cols + matrix[1, 2]
  if displacement is not None:
    src_r, src_c = src_r + displacement[..., 0], src_c + displacement[..., 1]
  r0, c0 = jnp.floor(src_r), jnp.floor(src_c)
  wr, wc = src_r - r0, src_c - c0
  r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
  out = jnp.zeros(image.shape, jnp.float32)
  for dr, dc, weight in ((0, 0, (1 - wr) * (1 - wc)), (0, 1, (1 - wr) * wc),
                         (1, 0, wr * (1 - wc)), (1, 1, wr * wc)):
    r, c = r0 + dr, c0 + dc
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    pixels = image[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)]
    out = out + jnp.where(inside, weight, 0.0)[..., None] * pixels
  return out.astype(image.dtype)


def random_affine(key: jax.Array, images: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """Applies an independent random affine transform to each image of `(n, H, W, C)`."""
  if cfg.is_identity:
    return images
  n, height, width = images.shape[:3]
  matrices = random_matrices(key, n, cfg, height, width)
  if cfg.elastic_alpha == 0:
    return jax.vmap(warp)(images, matrices)
  # Its own stream: the affine draws stay what they are without it.
  keys = jax.random.split(jax.random.fold_in(key, 0xE1A), n)
  fields = jax.vmap(lambda k: elastic_field(k, height, width, cfg.elastic_alpha,
                                            cfg.elastic_sigma))(keys)
  return jax.vmap(warp)(images, matrices, fields)
