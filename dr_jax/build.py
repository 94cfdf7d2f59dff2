"""What a config builds: data splits, test images, the model, preprocessing, member mapping.

Training, prediction, validation and pseudo-labelling all rebuild a run from its config with
these, so each of them sees the same split, model and preprocessing the run was trained with.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dr_jax import augment, data, models, provenance, steps
from dr_jax.config import check_value
from dr_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Split:
  """All labelled images, each member's train/validation rows, and the normalisation."""

  images: np.ndarray
  labels: np.ndarray  # Indices into `classes`: the models' output positions.
  classes: tuple[int, ...]  # The label values in train.csv, increasing.
  train_idx: np.ndarray  # (members, n_train)
  val_idx: np.ndarray  # (members, n_val)
  shift: float
  scale: float
  source: pathlib.Path  # The train.csv it came from,
  digest: str  # and its digits' `data.digest`, recorded in provenance.json.

  @property
  def val(self) -> data.Digits:
    """The first member's validation set (every member's, unless ensemble.own_split)."""
    return data.Digits(self.images[self.val_idx[0]], self.labels[self.val_idx[0]])

  def with_training_rows(self, images: np.ndarray, labels: np.ndarray) -> Split:
    """The split with extra training rows (labels as indices into `classes`) for every member;
    validation rows unchanged."""
    n = len(self.images)
    extra = np.broadcast_to(np.arange(n, n + len(labels)), (self.train_idx.shape[0], len(labels)))
    return dataclasses.replace(
        self, images=np.concatenate([self.images, images]),
        labels=np.concatenate([self.labels, labels]),
        train_idx=np.concatenate([self.train_idx, extra], axis=1))

  def with_validation_trained(self) -> Split:
    """The split whose members also train on their validation rows (a final fit), which stay
    the rows validation scores."""
    return dataclasses.replace(self, train_idx=np.concatenate([self.train_idx, self.val_idx],
                                                              axis=1))


def load_split(cfg: ml_collections.ConfigDict, data_dir: pathlib.Path) -> Split:
  """Loads train.csv, applies the subset/NaN policy and makes each member's stratified split."""
  source = data.find_csv(data_dir, "train.csv")
  digits = data.load_csv(source, with_labels=True, nan_policy=cfg.data.nan_policy,
                         fill_value=cfg.data.fill_value,
                         image_shape=tuple(cfg.data.get("image_shape", ())),
                         header=cfg.data.get("header", True))
  images, labels = digits.images, digits.labels
  assert labels is not None  # with_labels=True
  if cfg.data.subset:
    images, labels = images[: cfg.data.subset], labels[: cfg.data.subset]
  found = _classes(cfg, labels, source)
  labels = np.searchsorted(found, labels).astype(np.int32)
  members = cfg.ensemble.size
  seeds = [cfg.seed + m if cfg.ensemble.own_split else cfg.seed for m in range(members)]
  parts = [data.split_indices(labels, cfg.data.val_fraction, seed) for seed in seeds]
  train_idx = np.stack([p[0] for p in parts])
  shift, scale = data.normalization_stats(images[train_idx[0]], cfg.data.normalization)
  return Split(images, labels, found, train_idx, np.stack([p[1] for p in parts]), shift, scale,
               source, data.digest(digits))


def _classes(cfg: ml_collections.ConfigDict, labels: np.ndarray,
             source: pathlib.Path) -> tuple[int, ...]:
  """The label values of `labels`, checked against data.num_classes and data.classes."""
  values, counts = np.unique(labels, return_counts=True)
  found = tuple(int(c) for c in values)
  if (counts < 2).any():
    lone = [int(c) for c in values[counts < 2]]
    raise UserError(f"{source}: label(s) {_some(lone)} have only one image; a stratified split "
                    "needs at least 2 of each label (one for validation): fix or remove those "
                    "rows")
  wanted = cfg.data.get("num_classes", 0)
  if wanted and found != tuple(range(wanted)):
    none = sorted(set(range(wanted)) - set(found))
    outside = [c for c in found if c >= wanted]
    parts = ([f"no image of label(s) {_some(none)}"] if none else []) + \
        ([f"label(s) {_some(outside)} outside 0..{wanted - 1}"] if outside else [])
    raise UserError(f"{source}: data.num_classes={wanted} needs images of each label "
                    f"0..{wanted - 1} and no other, but it has {'; '.join(parts)}; fix the data "
                    "or set --config.data.num_classes=0 to take the labels it has")
  recorded = tuple(cfg.data.get("classes", ()))
  if recorded and found != recorded:
    raise UserError(f"{source}: has the labels {_some(found)}, but data.classes is "
                    f"{_some(recorded)}; a run predicts exactly the labels it trained on")
  return found


def _some(values: tuple[int, ...] | list[int]) -> str:
  """Up to ten values, then how many more."""
  more = f" and {len(values) - 10} more" if len(values) > 10 else ""
  return ", ".join(map(str, values[:10])) + more


# The keys `resolve` fills from the data when a config leaves them ().
RESOLVED_KEYS = ("data.classes", "data.image_shape")


def resolve(cfg: ml_collections.ConfigDict, split: Split) -> ml_collections.ConfigDict:
  """`cfg` with what train.csv decided: its labels (data.classes) and image shape."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.data.classes = split.classes
  cfg.data.image_shape = tuple(int(n) for n in split.images.shape[1:])
  return cfg


def classes(cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The label of each model output: a run's (its config.json), or for a config that has read
  no data, 0..data.num_classes-1 (the Digit Recognizer's ten by default)."""
  return tuple(cfg.data.get("classes", ())) or \
      tuple(range(cfg.data.get("num_classes", 0) or data.NUM_CLASSES))


def image_shape(cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(height, width, channels) of a run's images, or data.image_shape, or the Digit
  Recognizer's 28×28×1 for a config that has read no data."""
  shape = tuple(cfg.data.get("image_shape", ())) or data.IMAGE_SHAPE
  return shape[0], shape[1], shape[2]


def load_run_split(workdir: pathlib.Path,
                   data_dir: pathlib.Path) -> tuple[ml_collections.ConfigDict, Split]:
  """A trained run's config and its splits, rebuilt from a train.csv that must hold its digits."""
  cfg = provenance.read_config(workdir)
  split = load_split(cfg, data_dir)
  provenance.check_train_data(workdir, split.source, split.digest)
  return cfg, split


def load_test(cfg: ml_collections.ConfigDict, data_dir: pathlib.Path) -> data.Digits:
  """test.csv's images under the config's NaN policy (the rows a submission must cover)."""
  return data.load_csv(data.find_csv(data_dir, "test.csv"), with_labels=False,
                       nan_policy=cfg.data.nan_policy, fill_value=cfg.data.fill_value,
                       image_shape=tuple(cfg.data.get("image_shape", ())),
                       header=cfg.data.get("header", True))


def preprocess(cfg: ml_collections.ConfigDict, shift: float, scale: float,
               train: bool) -> steps.Preprocess:
  """The static preprocessing of a run; augmentation and label smoothing only for training."""
  a = cfg.augment
  if not train:
    return steps.Preprocess(augment.AugmentConfig(), shift, scale)
  aug = augment.AugmentConfig(a.rotation, a.zoom, a.shift, a.flip, a.get("elastic_alpha", 0.0),
                              a.get("elastic_sigma", 4.0))
  return steps.Preprocess(aug, shift, scale, cfg.train.get("label_smoothing", 0.0))


def model(cfg: ml_collections.ConfigDict) -> nn.Module:
  """The configured Flax module, one output per class."""
  return models.create_model(cfg.model.name, cfg.model.dtype, num_classes=len(classes(cfg)),
                             **cfg.model.kwargs.to_dict())


def loops_members(vectorize: str) -> bool:
  """Whether members run as an unrolled loop in the program instead of `jax.vmap`.

  `auto` loops on CPU: vmapped convolutions become grouped convolutions, which XLA:CPU runs
  at about half the single-model rate per member (`dr-jax bench` on an ensemble config shows
  it); on GPU/TPU vmap is the faster choice.
  """
  check_value("ensemble.vectorize", vectorize)
  return vectorize == "loop" or (vectorize == "auto" and jax.default_backend() == "cpu")


def member_map(fn: Callable, members: int, in_axes: tuple, vectorize: str = "auto") -> Callable:
  """Maps `fn` over the leading member axis: `jax.vmap`, or an unrolled loop (see above).

  One member always takes the loop, which keeps a single model on exactly the program it
  would have without ensembles.
  """
  if members > 1 and not loops_members(vectorize):
    return jax.vmap(fn, in_axes=in_axes)

  def looped(*args):
    outs = [fn(*[jax.tree.map(lambda x: x[m], a) if axis == 0 else a
                 for a, axis in zip(args, in_axes)]) for m in range(members)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return looped
