"""The base config, loading experiment files, and `--config.KEY=VALUE` overrides."""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib.util
import math
import numbers
import pathlib
import sys
import traceback
import types
from collections.abc import Iterator
from typing import Any, cast

import ml_collections

from dr_jax.errors import UserError

# Every name a config may choose, defined once: `check` validates against these before any work
# starts, and the module that implements each imports it for its own dispatch and errors.
MODELS = ("classic", "strided", "residual")  # models.MODELS: one Flax module each.
DTYPES = ("float32", "bfloat16")  # Compute dtypes; parameters stay float32.
OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("plateau", "constant", "cosine", "exponential", "onecycle")
NORMALIZATIONS = ("unit", "centered", "standardize")
NAN_POLICIES = ("error", "drop", "fill")
VECTORIZE = ("auto", "vmap", "loop")  # How members share a program: build.loops_members.
CHOICES = {"model.name": MODELS, "model.dtype": DTYPES, "optimizer.name": OPTIMIZERS,
           "schedule.name": SCHEDULES, "data.normalization": NORMALIZATIONS,
           "data.nan_policy": NAN_POLICIES, "ensemble.vectorize": VECTORIZE}
# key: (low, high, bounds), bounds "[)" etc. saying whether low and high themselves are allowed.
RANGES = {
    "seed": (0, math.inf, "[)"),  # scikit-learn's split takes no negative seed.
    "num_epochs": (1, math.inf, "[)"),
    "batch_size": (1, math.inf, "[)"),
    "data.val_fraction": (0, 1, "()"),
    "data.fill_value": (0, 255, "[]"),  # Filled cells become pixels.
    "data.subset": (0, math.inf, "[)"),
    "data.num_classes": (0, math.inf, "[)"),  # 0: the labels train.csv has.
    "augment.rotation": (0, math.inf, "[)"),
    "augment.zoom": (0, 1, "[)"),
    "augment.shift": (0, 1, "[)"),
    "augment.elastic_alpha": (0, math.inf, "[)"),
    "augment.elastic_sigma": (0, math.inf, "()"),
    "optimizer.lr": (0, math.inf, "()"),
    "optimizer.rho": (0, 1, "[)"),
    "optimizer.eps": (0, math.inf, "()"),  # RMSprop divides by sqrt(nu + eps); nu can be 0.
    "optimizer.momentum": (0, 1, "[)"),
    "schedule.factor": (0, 1, "()"),
    "schedule.patience": (0, math.inf, "[)"),
    "schedule.min_lr": (0, math.inf, "[)"),
    "schedule.min_delta": (0, math.inf, "[)"),
    "schedule.cooldown": (0, math.inf, "[)"),
    "schedule.decay": (0, 1, "(]"),
    "schedule.warmup_fraction": (0, 1, "[)"),
    "ensemble.size": (1, math.inf, "[)"),
    "train.steps_per_call": (1, math.inf, "[)"),
    "train.eval_batch_size": (1, math.inf, "[)"),
    "train.early_stop": (0, math.inf, "[)"),  # 0: never stop early.
    "train.label_smoothing": (0, 1, "[)"),
    "train.ema_decay": (0, 1, "[)"),
    "train.target_accuracy": (0, 1, "(]"),
    "train.budget_minutes": (0, math.inf, "[)"),
    "train.max_minutes": (0, math.inf, "[)"),
    "pseudo.threshold": (0, 1, "(]"),
}


def get_base_config() -> ml_collections.ConfigDict:
  """Every key any experiment may set; experiment files change a few of them."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Every PRNG key (init, split, batches, augmentation, dropout) derives from this.
  c.num_epochs = 30
  c.batch_size = 86

  # Data
  c.data = ml_collections.ConfigDict()
  c.data.val_fraction = 0.025  # Stratified validation share (the seed post's 2.5%).
  c.data.nan_policy = "error"  # error | drop (rows) | fill (with fill_value).
  c.data.fill_value = 0
  c.data.normalization = "unit"  # unit: /255 | centered: [-1, 1] | standardize: train mean/std.
  c.data.subset = 0  # Use only the first N training rows (0 = all): quick runs and tests.
  c.data.header = True  # False: CSVs without a header (label first, then pixels by position).
  # (height, width, channels) of the pixel columns, row-major; () = a square one-channel image.
  c.data.image_shape = ()
  # Fixes the label set to 0..N-1: train.csv must have images of each (0 = whatever it has).
  c.data.num_classes = 0
  # The label values, in the models' output order: train fills them from train.csv and records
  # them in the run's config.json; a value set here must be exactly train.csv's labels.
  c.data.classes = ()

  # Augmentation (applied on the fly inside the jitted step)
  c.augment = ml_collections.ConfigDict()
  c.augment.rotation = 10.0  # Degrees.
  c.augment.zoom = 0.1
  c.augment.shift = 0.1  # Fraction of height/width.
  c.augment.flip = False  # A flipped 2 is not a digit: ablation only.
  # Elastic distortion: pixels of smoothed random displacement (0 = off) and the smoothing width.
  c.augment.elastic_alpha = 0.0
  c.augment.elastic_sigma = 4.0

  # Model
  c.model = ml_collections.ConfigDict()
  c.model.name = "classic"  # One of MODELS.
  c.model.dtype = "float32"  # Compute dtype, one of DTYPES (params stay float32).
  c.model.kwargs = ml_collections.ConfigDict({
      "widths": (32, 64), "dense": 256, "dropout_conv": 0.25, "dropout_dense": 0.5,
      "batch_norm": False, "pool": "reshape"})

  # Optimizer
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "rmsprop"  # One of OPTIMIZERS.
  c.optimizer.lr = 1e-3
  c.optimizer.rho = 0.9  # RMSprop decay (Keras' rho).
  c.optimizer.eps = 1e-7  # Keras' epsilon.
  c.optimizer.momentum = 0.0

  # Learning-rate schedule
  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "plateau"  # One of SCHEDULES.
  c.schedule.factor = 0.5  # plateau: lr *= factor after `patience` epochs without improvement.
  c.schedule.patience = 3
  c.schedule.min_lr = 1e-5
  c.schedule.min_delta = 1e-4  # plateau: smaller val-accuracy gains do not count.
  c.schedule.cooldown = 0
  c.schedule.decay = 0.9  # exponential: lr *= decay each epoch.
  c.schedule.warmup_fraction = 0.2  # onecycle: share of steps spent warming up.

  # Ensemble: members trained together in one vmapped step
  c.ensemble = ml_collections.ConfigDict()
  c.ensemble.size = 1
  c.ensemble.own_split = False  # Each member its own validation split (seed + member).
  c.ensemble.vectorize = "auto"  # vmap | loop (unrolled in the program) | auto: loop on CPU.

  # Training loop
  c.train = ml_collections.ConfigDict()
  c.train.steps_per_call = 4  # Steps fused into one jitted call (fewer dispatches).
  c.train.eval_batch_size = 1000
  c.train.fast_cpu = True  # XLA:CPU compiler options that run these CNNs faster; see xla.py.
  # Stop once no member's validation accuracy improved for this many epochs (0 = never);
  # Keras' EarlyStopping(patience), for the open-ended plateau schedule.
  c.train.early_stop = 0
  # Train against (1 - a) * one-hot + a / classes (Szegedy et al. 2016); 0: plain one-hot.
  c.train.label_smoothing = 0.0
  # Validate, keep as best and predict with an exponential moving average of the parameters,
  # updated every step with this decay (e.g. 0.999); 0: the parameters themselves.
  c.train.ema_decay = 0.0
  # The log says when validation accuracy first reaches this; `report` and `sweep` show the
  # minutes it took (time to accuracy). Changes nothing in training.
  c.train.target_accuracy = 0.995
  # Minutes for the whole of `train` (loading and compiling included) on this machine: the step
  # rate is measured after compiling and num_epochs becomes the most epochs that fit (recorded
  # in the run's config.json). 0: num_epochs as given.
  c.train.budget_minutes = 0.0
  # A cap instead of a budget: num_epochs, or fewer where they would not end within these
  # minutes of `train` on this machine (measured as for a budget; the count goes into
  # config.json). A budget, when set, decides alone. 0: no cap.
  c.train.max_minutes = 0.0
  # Train on every labelled row (the validation rows too) and keep the last epoch: for a recipe
  # and epoch count already chosen on validation, under a schedule that ends low (onecycle,
  # cosine, exponential). Validation figures are then on images the model trained on.
  c.train.final_fit = False

  # Pseudo-labels: a trained run labels test.csv; its confident images join the training rows
  c.pseudo = ml_collections.ConfigDict()
  c.pseudo.teacher = ""  # The teacher's workdir ("" = none), e.g. runs/default from `dr-jax run`.
  c.pseudo.threshold = 0.99  # Least teacher probability for a test image to join.

  # Prediction (`dr-jax predict --tta N` overrides)
  c.predict = ml_collections.ConfigDict()
  c.predict.tta = 1  # Deterministic test-time transforms averaged (1 = none; see augment.py).
  return c


@contextlib.contextmanager
def user_code(path: pathlib.Path) -> Iterator[None]:
  """Runs code of a user's Python file with its directory importable; any error is one line."""
  path = pathlib.Path(path)
  # Let an experiment import its sibling files (e.g. a shared ablation grid).
  sys.path.insert(0, str(path.parent))
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # A user's file may raise anything; report where, in one line.
    if isinstance(e, SyntaxError):
      where = f"{pathlib.Path(e.filename or str(path)).name}:{e.lineno}"
    else:
      frame = traceback.extract_tb(e.__traceback__)[-1]
      where = f"{pathlib.Path(frame.filename).name}:{frame.lineno}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise UserError(f"config file {path} raised {type(e).__name__}: {first} (at {where})") from None
  finally:
    sys.path.remove(str(path.parent))


def experiments_dir() -> pathlib.Path:
  """The shipped experiment configs: dr_jax/experiments when installed, experiments/ in a
  checkout."""
  package = pathlib.Path(__file__).resolve().parent
  installed = package / "experiments"
  return installed if installed.is_dir() else package.parent / "experiments"


def shipped_configs() -> list[str]:
  """Names `--config` accepts for the shipped configs (`default`, `ablations/adam`, ...)."""
  root = experiments_dir()
  files = [p for p in (*sorted(root.glob("*.py")), *sorted(root.glob("*/*.py")))
           if "def get_config" in p.read_text(errors="replace")]
  return [str(p.relative_to(root).with_suffix("")) for p in files]


def find_config(config: str | pathlib.Path) -> pathlib.Path:
  """A config's file: the path itself, or a shipped config by name ("default")."""
  path = pathlib.Path(config)
  if path.is_file():
    return path
  shipped = experiments_dir() / path.with_suffix(".py")
  if path.suffix in ("", ".py") and not path.is_absolute() and shipped.is_file():
    return shipped
  names = shipped_configs()
  close = difflib.get_close_matches(str(config), names, n=1)
  top = [name for name in names if "/" not in name]
  hint = f"; did you mean {close[0]}?" if close else f" (shipped: {', '.join(top)}, ...)"
  raise UserError(f"config file {path} not found; pass a .py file or the name of a shipped "
                  f"config such as default{hint}")


def load_module(path: str | pathlib.Path) -> types.ModuleType:
  """Imports a config (or grid) file under `user_code`; call its functions under it too."""
  path = find_config(path)
  spec = importlib.util.spec_from_file_location(f"_dr_jax_config_{path.stem}", path)
  if spec is None or spec.loader is None:  # Python imports only .py (and compiled) files.
    raise UserError(f"config file {path} is not a Python file; pass a .py file such as "
                    "experiments/default.py")
  module = importlib.util.module_from_spec(spec)
  with user_code(path):
    spec.loader.exec_module(module)
  return module


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Imports a Python config file (or a shipped one by name) and calls its `get_config()`;
  errors are one line."""
  path = find_config(path)
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} has no get_config() function")
  with user_code(path):
    config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"config file {path}: get_config() returned {type(config).__name__}, expected "
                    "an ml_collections.ConfigDict (start from dr_jax.config.get_base_config())")
  return config


def _parse_value(text: str, current, key: str):
  """Parses an override string into the type of the value it replaces."""
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise UserError(f"--config.{key}={text}: expected true or false")
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise UserError(f"--config.{key}={text}: expected {type(current).__name__}, "
                    f"like {current!r}") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, (int, float, tuple)) and type(value) is not type(current):
    raise UserError(f"--config.{key}={text}: expected {type(current).__name__}, "
                    f"like {current!r}")
  return value


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies `KEY=VALUE` strings (dotted keys) to a copy of `config`, type-checked."""
  config = ml_collections.ConfigDict(config.to_dict())
  flat = flatten(config)
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise UserError(f"--config.{item}: expected --config.KEY=VALUE")
    if key not in flat:
      close = difflib.get_close_matches(key, list(flat), n=1)
      hint = f"; did you mean {close[0]}?" if close else "; see `dr-jax train --help`"
      raise UserError(f"unknown config key {key!r}{hint}")
    value = _parse_value(text, flat[key], key)
    parent = config
    *parents, leaf = key.split(".")
    for name in parents:
      parent = parent[name]
    parent[leaf] = value
    flat[key] = value
  return config


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """Dotted-key view of a nested config: {'optimizer.lr': 0.001, ...}."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _interval(low: float, high: float, bounds: str) -> str:
  """Words for a RANGES entry: "be at least 1", "be greater than 0" or "lie in (0, 1]"."""
  if high == math.inf:
    return f"be at least {low:g}" if bounds[0] == "[" else f"be greater than {low:g}"
  return f"lie in {bounds[0]}{low:g}, {high:g}{bounds[1]}"


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
  """Raises a one-line UserError naming the allowed values (and a close one) unless allowed."""
  if value not in allowed:
    # Every allowed name is lower case; 'RMSprop' should find 'rmsprop'.
    close = difflib.get_close_matches(str(value).lower(), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UserError(f"config {key}={value!r} is not one of {', '.join(allowed)}{hint}")


def check_value(key: str, value: Any) -> None:
  """Raises a one-line UserError unless `value` is allowed for `key` by CHOICES or RANGES."""
  if key in CHOICES:
    check_choice(key, value, CHOICES[key])
    return
  low, high, bounds = RANGES[key]
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise UserError(f"config {key}={value!r} is not a number; it must "
                    f"{_interval(low, high, bounds)}")
  # typeshed's numbers.Real declares no comparison with int or float; every Real has one.
  number = cast(float, value)
  above = low <= number if bounds[0] == "[" else low < number
  below = number <= high if bounds[1] == "]" else number < high
  if not (above and below):  # Also rejects NaN.
    raise UserError(f"config {key}={value!r} must {_interval(low, high, bounds)}")


def check(config: ml_collections.ConfigDict) -> None:
  """Validates keys and values that no type check catches, before any work starts."""
  # model.kwargs belong to the chosen model: models.check_options checks them below.
  general = lambda c: {k for k in flatten(c) if not k.startswith("model.kwargs.")}
  unknown = sorted(general(config) - general(get_base_config()))
  if unknown:
    raise UserError(f"unknown config key(s) {', '.join(unknown)}; every key must exist in "
                    "dr_jax.config.get_base_config()")
  flat = flatten(config)
  for key in (*CHOICES, *RANGES):
    check_value(key, flat[key])
  # Here, not at the top: loading a config file needs no jax.
  from dr_jax import augment, models

  augment.check_tta(config.predict.tta, f"config predict.tta={config.predict.tta}")
  _check_data_layout(config.data)
  _check_final_fit(config)
  # The chosen model's own options, so a typo fails now rather than when its run starts.
  models.check_options(config.model.name, config.model.kwargs.to_dict())


def _check_final_fit(config: ml_collections.ConfigDict) -> None:
  """A final fit has no held-out images, so nothing may steer by validation accuracy."""
  if not config.train.final_fit:
    return
  if config.schedule.name == "plateau":
    raise UserError("config train.final_fit=True with schedule.name='plateau': the plateau rule "
                    "follows validation accuracy, which a final fit trains on; choose onecycle, "
                    "cosine, exponential or constant")
  if config.train.early_stop:
    raise UserError(f"config train.final_fit=True with train.early_stop={config.train.early_stop}"
                    ": early stopping follows validation accuracy, which a final fit trains on; "
                    "set train.early_stop=0")


def _check_data_layout(data: ml_collections.ConfigDict) -> None:
  """data.image_shape is () or three positive integers; data.classes distinct non-negative ones."""
  shape = data.image_shape
  if shape != () and (len(shape) != 3 or not all(
      isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
    raise UserError(f"config data.image_shape={shape!r} must be () (a square one-channel image "
                    "from the pixel count) or (height, width, channels), e.g. (32, 32, 3)")
  classes = data.classes
  if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes) or \
      list(classes) != sorted(set(classes)):
    raise UserError(f"config data.classes={classes!r} must list distinct non-negative integer "
                    "labels in increasing order (or be () to take train.csv's)")
