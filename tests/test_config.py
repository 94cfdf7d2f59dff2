"""Tests for dr_jax.config: the base config, experiment files, overrides and checks."""

import ast
import pathlib
import subprocess
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
  path = write(tmp_path, "from dr_jax.config import get_base_config\n"
               "import _shared_grid_for_test\n\n\n"
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


def set_key(c, key, value):
  """Sets a dotted key of a config in place."""
  *parents, leaf = key.split(".")
  node = c
  for name in parents:
    node = node[name]
  node[leaf] = value


# Every bad value fails in check() with a one-line error naming the key and the value.
BAD_VALUES = [
    ("seed", -1), ("batch_size", 0), ("num_epochs", 0), ("num_epochs", -1),
    ("train.steps_per_call", 0), ("train.eval_batch_size", 0), ("train.early_stop", -1),
    ("ensemble.size", 0), ("optimizer.lr", 0.0), ("optimizer.lr", -1e-3),
    ("optimizer.rho", -0.1), ("optimizer.rho", 1.0), ("optimizer.eps", 0.0),
    ("optimizer.momentum", -0.5), ("optimizer.momentum", 1.0),
    ("schedule.factor", 0.0), ("schedule.factor", 1.0), ("schedule.patience", -1),
    ("schedule.min_lr", -1e-5), ("schedule.min_delta", -1e-4), ("schedule.cooldown", -1),
    ("schedule.decay", 0.0), ("schedule.decay", 1.5), ("schedule.warmup_fraction", -0.1),
    ("schedule.warmup_fraction", 1.0), ("data.val_fraction", 0.0), ("data.val_fraction", 1.0),
    ("data.subset", -1), ("data.fill_value", 256), ("data.fill_value", -1),
    ("data.num_classes", -1), ("data.image_shape", (28, 28)), ("data.image_shape", (28, 0, 1)),
    ("train.label_smoothing", -0.1), ("train.label_smoothing", 1.0),
    ("augment.elastic_alpha", -1.0), ("augment.elastic_sigma", 0.0),
    ("train.ema_decay", -0.1), ("train.ema_decay", 1.0),
    ("train.target_accuracy", 0.0), ("train.target_accuracy", 1.01),
    ("train.budget_minutes", -1.0),
    ("train.max_minutes", -1.0),
    ("data.image_shape", (28, 28.0, 1)), ("data.image_shape", (28, True, 1)),
    ("data.classes", (1, 0)), ("data.classes", (0, 0)), ("data.classes", (-1, 0)),
    ("data.classes", (0, 1.5)),
    ("augment.rotation", -10.0), ("augment.shift", 1.0), ("augment.shift", -0.1),
    ("augment.zoom", 1.5), ("predict.tta", 0), ("predict.tta", 10),
    ("pseudo.threshold", 0.0), ("pseudo.threshold", 1.5), ("optimizer.lr", float("nan")),
    ("model.name", "resnet"), ("model.dtype", "float16"), ("optimizer.name", "adamw"),
    ("schedule.name", "linear"), ("data.normalization", "minmax"), ("data.nan_policy", "skip"),
    ("ensemble.vectorize", "pmap")]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_check_rejects_bad_values(key, value):
  c = config_mod.get_base_config()
  set_key(c, key, value)
  one_line_error(lambda: config_mod.check(c), f"{key}={value!r}")


def test_bad_values_cover_every_choice_and_range():
  assert {key for key, _ in BAD_VALUES} >= set(config_mod.CHOICES) | set(config_mod.RANGES)


@pytest.mark.parametrize("key,value", [
    ("data.val_fraction", 0.5), ("data.subset", 0), ("schedule.decay", 1.0),
    ("schedule.warmup_fraction", 0.0), ("schedule.patience", 0), ("schedule.min_lr", 0.0),
    ("optimizer.momentum", 0.9), ("augment.rotation", 0.0), ("data.fill_value", 255),
    ("pseudo.threshold", 1.0), ("model.dtype", "bfloat16"), ("data.num_classes", 24),
    ("data.image_shape", (32, 24, 3)), ("data.classes", (0, 1, 3, 24))])
def test_check_accepts_values_at_the_edges(key, value):
  c = config_mod.get_base_config()
  set_key(c, key, value)
  config_mod.check(c)



@pytest.mark.parametrize("overrides,message", [
    ({"schedule.name": "plateau"}, "config train.final_fit=True with schedule.name='plateau': the "
     "plateau rule follows validation accuracy, which a final fit trains on; choose onecycle, "
     "cosine, exponential or constant"),
    ({"schedule.name": "onecycle", "train.early_stop": 5}, "config train.final_fit=True with "
     "train.early_stop=5: early stopping follows validation accuracy, which a final fit trains "
     "on; set train.early_stop=0")])
def test_a_final_fit_refuses_what_steers_by_validation(overrides, message):
  c = config_mod.get_base_config()
  c.train.final_fit = True
  for key, value in overrides.items():
    set_key(c, key, value)
  with pytest.raises(UserError) as e:
    config_mod.check(c)
  assert str(e.value) == message
  set_key(c, "train.final_fit", False)
  config_mod.check(c)

@pytest.mark.parametrize("key,value,allowed,close", [
    ("schedule.name", "platau", "plateau, constant, cosine, exponential, onecycle", "plateau"),
    ("model.name", "clasic", "classic, strided", "classic"),
    ("optimizer.name", "RMSprop", "rmsprop, adam, sgd", "rmsprop"),
    ("optimizer.name", "lbfgs", "rmsprop, adam, sgd", None),
    ("data.nan_policy", "dropp", "error, drop, fill", "drop"),
    ("data.normalization", "standardise", "unit, centered, standardize", "standardize"),
    ("model.dtype", "bf16", "float32, bfloat16", "bfloat16")])
def test_bad_choice_names_the_allowed_values_and_a_close_one(key, value, allowed, close):
  c = config_mod.get_base_config()
  set_key(c, key, value)
  with pytest.raises(UserError) as info:
    config_mod.check(c)
  message = str(info.value)
  assert f"config {key}={value!r} is not one of {allowed}" in message
  assert (f"did you mean {close!r}?" in message) if close else "did you mean" not in message


@pytest.mark.parametrize("key,value,words", [
    ("data.val_fraction", 1.5, "must lie in (0, 1)"), ("schedule.decay", 0.0, "must lie in (0, 1]"),
    ("augment.zoom", 1.0, "must lie in [0, 1)"), ("data.fill_value", 300, "must lie in [0, 255]"),
    ("data.subset", -5, "must be at least 0"), ("optimizer.eps", 0.0, "must be greater than 0")])
def test_bad_range_names_the_interval(key, value, words):
  c = config_mod.get_base_config()
  set_key(c, key, value)
  one_line_error(lambda: config_mod.check(c), f"config {key}={value!r} {words}")


def test_a_value_that_is_not_a_number_is_a_user_error():
  one_line_error(lambda: config_mod.check_value("optimizer.lr", "fast"), "optimizer.lr='fast'",
                 "not a number")


@pytest.mark.parametrize("kwargs,fragment", [
    ({"widths_typo": (1, 2)}, "widths_typo"), ({"pool": "avg"}, "model.kwargs.pool='avg'")])
def test_check_rejects_options_the_model_does_not_take(kwargs, fragment):
  c = config_mod.get_base_config()
  c.model.kwargs = ml_collections.ConfigDict(dict(c.model.kwargs.to_dict(), **kwargs))
  one_line_error(lambda: config_mod.check(c), fragment)


def test_importing_config_needs_no_jax():
  """Loading a config file stays fast: dr_jax.config imports neither jax nor numpy."""
  code = "import sys, dr_jax.config; print(sorted({'jax', 'numpy'} & set(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_grid_and_config_files_share_one_loader(tmp_path):
  path = write(tmp_path, 'import _missing_sibling_for_test\n', "grid.py")
  one_line_error(lambda: config_mod.load_module(path), "ModuleNotFoundError",
                 "_missing_sibling_for_test", "grid.py:1", path=path)
  assert str(tmp_path) not in sys.path
