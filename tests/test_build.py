"""Tests of dr_jax.build: what a config builds (splits, test images, preprocessing, member map)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dr_jax import augment, build, models
from dr_jax.errors import UserError
from conftest import PIXEL_HEADER, csv_text, tiny_config


def test_auto_loops_members_on_cpu_only():
  assert build.loops_members("auto") == (jax.default_backend() == "cpu")
  assert build.loops_members("loop") and not build.loops_members("vmap")
  with pytest.raises(UserError, match="ensemble.vectorize='pmap' is not one of"):
    build.loops_members("pmap")


@settings(max_examples=10, deadline=None)
@given(members=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_member_map_loop_and_vmap_agree(members, seed):
  rng = np.random.default_rng(seed)
  weights = jnp.asarray(rng.normal(size=(members, 3, 2)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  fn = lambda w, inputs: {"y": jnp.tanh(inputs @ w)}
  looped = build.member_map(fn, members, (0, None), "loop")(weights, x)
  vmapped = build.member_map(fn, members, (0, None), "vmap")(weights, x)
  assert looped["y"].shape == (members, 5, 2)
  np.testing.assert_allclose(looped["y"], vmapped["y"], rtol=1e-6, atol=1e-6)


def test_own_split_gives_each_member_its_own_validation_rows(data_dir):
  shared = build.load_split(tiny_config(**{"ensemble.size": 2}), data_dir)
  own = build.load_split(tiny_config(**{"ensemble.size": 2, "ensemble.own_split": True}),
                         data_dir)
  assert (shared.val_idx[0] == shared.val_idx[1]).all()
  assert not (own.val_idx[0] == own.val_idx[1]).all()
  for m in range(2):
    assert not set(own.val_idx[m]) & set(own.train_idx[m])
    assert len(own.val_idx[m]) + len(own.train_idx[m]) == len(own.labels)


def test_subset_keeps_the_first_rows(data_dir):
  full = build.load_split(tiny_config(), data_dir)
  part = build.load_split(tiny_config(**{"data.subset": 100}), data_dir)
  np.testing.assert_array_equal(part.images, full.images[:100])
  assert part.train_idx.shape[1] + part.val_idx.shape[1] == 100


@pytest.mark.parametrize("policy,rows", [("drop", 2), ("fill", 3)])
def test_load_test_applies_the_configs_nan_policy(tmp_path, policy, rows):
  pixels = np.full((3, 784), 7, dtype=np.int64)
  text = csv_text(PIXEL_HEADER, pixels).splitlines()
  text[2] = text[2].replace(",7", ",", 1)  # One empty cell in the second image.
  (tmp_path / "test.csv").write_text("\n".join(text) + "\n")
  test = build.load_test(tiny_config(**{"data.nan_policy": policy, "data.fill_value": 3}),
                         tmp_path)
  assert test.images.shape == (rows, 28, 28, 1) and test.labels is None
  if policy == "fill":
    assert test.images[1].min() == 3
  with pytest.raises(UserError, match="test.csv"):
    build.load_test(tiny_config(), tmp_path)


def test_preprocess_augments_only_for_training():
  cfg = tiny_config(**{"augment.rotation": 12.0, "augment.shift": 0.2})
  train = build.preprocess(cfg, 0.5, 2.0, train=True)
  assert train.augment == augment.AugmentConfig(12.0, cfg.augment.zoom, 0.2, False)
  assert (train.shift, train.scale) == (0.5, 2.0)
  assert build.preprocess(cfg, 0.5, 2.0, train=False).augment == augment.AugmentConfig()


def test_model_is_the_configured_architecture_with_its_kwargs():
  model = build.model(tiny_config(**{"model.kwargs.dense": 48}))
  assert isinstance(model, models.ClassicCNN)
  assert (model.widths, model.dense) == ((8, 16), 48)


@settings(max_examples=30, deadline=None)
@given(members=st.integers(1, 4), n=st.integers(10, 40), extra=st.integers(0, 15),
       seed=st.integers(0, 2**16))
def test_with_training_rows_adds_the_same_rows_to_every_member_and_keeps_validation(
    members, n, extra, seed):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  orders = [rng.permutation(n) for _ in range(members)]
  split = build.Split(images, labels, np.stack([o[: n - 5] for o in orders]),
                      np.stack([o[n - 5:] for o in orders]), 0.0, 255.0,
                      pathlib.Path("train.csv"), "digest")
  new_images = rng.integers(0, 256, (extra, 28, 28, 1), dtype=np.uint8)
  new_labels = rng.integers(0, 10, extra).astype(np.int32)
  grown = split.with_training_rows(new_images, new_labels)
  np.testing.assert_array_equal(grown.val_idx, split.val_idx)
  np.testing.assert_array_equal(grown.images[:n], images)
  assert grown.train_idx.shape == (members, n - 5 + extra)
  for member in range(members):
    np.testing.assert_array_equal(grown.train_idx[member, : n - 5], split.train_idx[member])
    added = grown.train_idx[member, n - 5:]
    np.testing.assert_array_equal(grown.images[added], new_images)
    np.testing.assert_array_equal(grown.labels[added], new_labels)
