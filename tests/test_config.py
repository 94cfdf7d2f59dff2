"""Tests for dr_jax.config: the base config, experiment files, overrides and checks."""

import ast
import pathlib
import sys

import ml_collections
import pytest

from dr_jax import config as config_mod
from dr_jax import build
from dr_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Files starting with "_" are helpers an experiment imports, not experiments themselves;
# torch_baseline.py is the benchmark's PyTorch reference script, not a config.
EXPERIMENTS = [p for p in sorted(ROOT.glob("experiments/*.py"))
               + sorted(ROOT.glob("experiments/ablations/*.py"))
               if not p.name.startswith("_") and p.name != "torch_baseline.py"]


def one_line_error(fn, *fragments, path=None):
  """Asserts `fn()` raises a one-line UserError naming `path` (if given) and every fragment."""
  with pytest.raises(UserError) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message
  if path is not None:
    assert str(path) in message
    message = message.replace(str(path), "")
  for fragment in fragments:
    assert fragment in message, (fragment, str(info.value))


def write(tmp_path, text, name="exp.py"):
  """Writes a config file into tmp_path and returns its path."""
  path = tmp_path / name
  path.write_text(text)
  return path


def test_base_config_has_top_level_training_keys():
  c = config_mod.get_base_config()
  assert isinstance(c, ml_collections.ConfigDict)
  for key in ("seed", "num_epochs", "batch_size"):
    assert key in c and isinstance(c[key], int)
  config_mod.check(c)


def test_flatten_uses_dotted_keys():
  flat = config_mod.flatten(config_mod.get_base_config())
  assert flat["optimizer.lr"] == 1e-3
  assert flat["model.kwargs.widths"] == (32, 64)
  assert not any(isinstance(v, ml_collections.ConfigDict) for v in flat.values())


def test_experiments_folder_is_not_empty():
  assert any(p.parent.name == "experiments" for p in EXPERIMENTS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_experiment_is_a_valid_delta_of_the_base_config(path):
  c = config_mod.load_config(path)
  assert isinstance(c, ml_collections.ConfigDict)
  # model.kwargs belong to the chosen model (checked by building it); all else is the base's.
  general = lambda cfg: {k for k in config_mod.flatten(cfg) if not k.startswith("model.kwargs.")}
  assert general(c) == general(config_mod.get_base_config())
  config_mod.check(c)
  build.model(c)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_experiment_docstring_gives_the_command(path):
  docstring = ast.get_docstring(ast.parse(path.read_text()))
  assert docstring and "command" in docstring.lower()


def test_load_config_missing_file(tmp_path):
  path = tmp_path / "missing.py"
  one_line_error(lambda: config_mod.load_config(path), "not found", path=path)


def test_load_config_without_get_config(tmp_path):
  path = write(tmp_path, "X = 1\n")
  one_line_error(lambda: config_mod.load_config(path), "get_config", path=path)


def test_load_config_get_config_raises(tmp_path):
  path = write(tmp_path, '"""Doc."""\n\n\ndef get_config():\n  raise RuntimeError("boom")\n')
  one_line_error(lambda: config_mod.load_config(path), "RuntimeError", "boom",
                 "exp.py:5", path=path)


def test_load_config_error_with_multi_line_message_is_one_line(tmp_path):
  path = write(tmp_path, 'def get_config():\n  raise ValueError("first\\nsecond")\n')
  one_line_error(lambda: config_mod.load_config(path), "ValueError", "first", path=path)


def test_load_config_get_config_returns_dict(tmp_path):
  path = write(tmp_path, "def get_config():\n  return {'seed': 1}\n")
  one_line_error(lambda: config_mod.load_config(path), "dict", "ConfigDict", path=path)


def test_load_config_syntax_error(tmp_path):
  path = write(tmp_path, "def get_config(:\n  pass\n")
  one_line_error(lambda: config_mod.load_config(path), "SyntaxError", path=path)


def test_load_config_can_import_a_sibling_and_leaves_sys_path_alone(tmp_path):
  write(tmp_path, "EPOCHS = 7\n", "_shared_grid_for_test.py")
  path = write(tmp_path, "from dr_jax.config import get_base_config\nimport _shared_grid_for_test\n\n\n"
               "def get_config():\n  c = get_base_config()\n"
               "  c.num_epochs = _shared_grid_for_test.EPOCHS\n  return c\n")
  before = list(sys.path)
  assert config_mod.load_config(path).num_epochs == 7
  assert sys.path == before
  with pytest.raises(UserError):
    config_mod.load_config(write(tmp_path, "def get_config():\n  1 / 0\n", "bad.py"))
  assert sys.path == before


@pytest.mark.parametrize("override,key,expected", [
    ("optimizer.lr=3e-4", "optimizer.lr", 3e-4),
    ("num_epochs=5", "num_epochs", 5),
    ("optimizer.lr=1", "optimizer.lr", 1.0),
    ("augment.flip=true", "augment.flip", True),
    ("augment.flip=True", "augment.flip", True),
    ("augment.flip=1", "augment.flip", True),
    ("augment.flip=false", "augment.flip", False),
    ("augment.flip=0", "augment.flip", False),
    ("optimizer.name=adam", "optimizer.name", "adam"),
    ("model.name=strided", "model.name", "strided"),
    ("model.kwargs.widths=(16,32)", "model.kwargs.widths", (16, 32)),
    ("model.kwargs.widths=[8, 16, 32]", "model.kwargs.widths", (8, 16, 32)),
    ("data.nan_policy=a=b", "data.nan_policy", "a=b"),
])
def test_apply_overrides_parses_to_the_field_type(override, key, expected):
  c = config_mod.apply_overrides(config_mod.get_base_config(), [override])
  value = config_mod.flatten(c)[key]
  assert value == expected and type(value) is type(expected)


def test_apply_overrides_applies_several_and_the_last_wins():
  c = config_mod.apply_overrides(config_mod.get_base_config(),
                                 ["seed=3", "batch_size=16", "seed=4"])
  assert (c.seed, c.batch_size) == (4, 16)


def test_apply_overrides_does_not_mutate_the_input():
  base = config_mod.get_base_config()
  before = config_mod.flatten(base)
  c = config_mod.apply_overrides(base, ["optimizer.lr=0.5", "model.kwargs.dense=8"])
  assert (c.optimizer.lr, c.model.kwargs.dense) == (0.5, 8)
  assert config_mod.flatten(base) == before


def test_apply_overrides_suggests_a_close_key():
  one_line_error(lambda: config_mod.apply_overrides(config_mod.get_base_config(),
                                                    ["optimzer.lr=1e-3"]),
                 "optimzer.lr", "did you mean optimizer.lr")


@pytest.mark.parametrize("override", [
    "num_epochs=abc", "num_epochs=2.5", "num_epochs=true", "augment.flip=maybe",
    "optimizer.lr=fast", "model.kwargs.widths=16", "seed=[1]"])
def test_apply_overrides_rejects_the_wrong_type(override):
  key, _, text = override.partition("=")
  one_line_error(lambda: config_mod.apply_overrides(config_mod.get_base_config(), [override]),
                 key, text)


def test_apply_overrides_needs_an_equals_sign():
  one_line_error(lambda: config_mod.apply_overrides(config_mod.get_base_config(), ["num_epochs"]),
                 "num_epochs", "KEY=VALUE")


@pytest.mark.parametrize("key,value", [
    ("batch_size", 0), ("num_epochs", 0), ("num_epochs", -1), ("train.steps_per_call", 0),
    ("train.eval_batch_size", 0), ("optimizer.lr", 0.0), ("optimizer.lr", -1e-3),
    ("augment.shift", 1.0), ("augment.shift", -0.1), ("augment.zoom", 1.5),
    ("ensemble.vectorize", "pmap"), ("predict.tta", 0), ("predict.tta", 10),
    ("pseudo.threshold", 0.0), ("pseudo.threshold", 1.5), ("train.early_stop", -1)])
def test_check_rejects_bad_values(key, value):
  c = config_mod.get_base_config()
  *parents, leaf = key.split(".")
  node = c
  for name in parents:
    node = node[name]
  node[leaf] = value
  one_line_error(lambda: config_mod.check(c), key.split(".")[-1])
