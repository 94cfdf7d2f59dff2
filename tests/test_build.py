"""Tests of dr_jax.build: what a config builds (splits, test images, preprocessing, member map)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dr_jax import augment, build, models
from dr_jax.errors import UserError
from conftest import PIXEL_HEADER, csv_text, tiny_config, write_family_dir


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



def test_a_final_fit_split_trains_each_member_on_every_row_and_keeps_validation(data_dir):
  split = build.load_split(tiny_config(**{"ensemble.size": 2, "ensemble.own_split": True}),
                           data_dir)
  fit = split.with_validation_trained()
  np.testing.assert_array_equal(fit.val_idx, split.val_idx)
  for m in range(2):
    assert sorted(fit.train_idx[m]) == list(range(len(split.labels)))

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
  split = build.Split(images, labels, tuple(range(10)), np.stack([o[: n - 5] for o in orders]),
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


def _family(tmp_path, classes, **kwargs):
  return write_family_dir(tmp_path / "data", classes=tuple(classes), n_train=4 * len(classes),
                          n_test=4, **kwargs)


def test_split_labels_are_output_positions_of_the_classes_train_csv_has(tmp_path):
  classes = (0, 2, 3, 24)
  data_dir = _family(tmp_path, classes)
  split = build.load_split(tiny_config(**{"data.val_fraction": 0.25}), data_dir)
  assert split.classes == classes
  raw = pd.read_csv(data_dir / "train.csv")["label"].to_numpy()
  np.testing.assert_array_equal(np.asarray(classes)[split.labels], raw)
  resolved = build.resolve(tiny_config(), split)
  assert resolved.data.classes == classes and resolved.data.image_shape == (28, 28, 1)
  assert build.classes(resolved) == classes and build.model(resolved).num_classes == 4


def test_num_classes_and_classes_are_checks_on_train_csv(tmp_path):
  data_dir = _family(tmp_path, (0, 1, 3, 4))
  path = data_dir / "train.csv"
  with pytest.raises(UserError) as info:
    build.load_split(tiny_config(**{"data.num_classes": 4}), data_dir)
  assert str(info.value) == (
      f"{path}: data.num_classes=4 needs images of each label 0..3 and no other, but it has no "
      "image of label(s) 2; label(s) 4 outside 0..3; fix the data or set "
      "--config.data.num_classes=0 to take the labels it has")
  assert build.load_split(tiny_config(**{"data.num_classes": 5, "data.val_fraction": 0.25}),
                          _family(tmp_path / "b", range(5))).classes == (0, 1, 2, 3, 4)
  with pytest.raises(UserError) as info:
    build.load_split(tiny_config(**{"data.classes": (0, 1, 2, 3)}), data_dir)
  assert str(info.value) == (f"{path}: has the labels 0, 1, 3, 4, but data.classes is 0, 1, 2, "
                             "3; a run predicts exactly the labels it trained on")


def test_a_label_with_one_image_is_named(tmp_path):
  data_dir = _family(tmp_path, range(10))
  lines = (data_dir / "train.csv").read_text().splitlines()
  lines[5] = "77" + lines[5][lines[5].index(","):]
  (data_dir / "train.csv").write_text("\n".join(lines) + "\n")
  with pytest.raises(UserError) as info:
    build.load_split(tiny_config(), data_dir)
  assert str(info.value) == (f"{data_dir / 'train.csv'}: label(s) 77 have only one image; a "
                             "stratified split needs at least 2 of each label (one for "
                             "validation): fix or remove those rows")


def test_a_config_that_read_no_data_describes_the_digit_recognizer():
  cfg = tiny_config()
  assert build.classes(cfg) == tuple(range(10)) and build.image_shape(cfg) == (28, 28, 1)
  cfg = tiny_config(**{"data.num_classes": 24, "data.image_shape": (32, 32, 3)})
  assert build.classes(cfg) == tuple(range(24)) and build.image_shape(cfg) == (32, 32, 3)
  # A run's config.json from before these keys existed: the Digit Recognizer's.
  del cfg.data["classes"], cfg.data["image_shape"], cfg.data["num_classes"]
  assert build.classes(cfg) == tuple(range(10)) and build.image_shape(cfg) == (28, 28, 1)


def test_load_test_reads_the_runs_layout_and_ids(tmp_path):
  data_dir = _family(tmp_path, range(10), shape=(16, 16, 3), header=False, ids_from=None)
  cfg = tiny_config(**{"data.header": False, "data.image_shape": (16, 16, 3)})
  test = build.load_test(cfg, data_dir)
  assert test.images.shape == (4, 16, 16, 3) and test.ids is None
  kannada = _family(tmp_path / "k", range(10), ids_from=0)
  np.testing.assert_array_equal(build.load_test(tiny_config(), kannada).ids, [0, 1, 2, 3])
