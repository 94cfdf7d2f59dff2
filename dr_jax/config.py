"""The base config, loading experiment files, and `--config.KEY=VALUE` overrides."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
import sys
import traceback

import ml_collections

from dr_jax.errors import UserError


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

  # Augmentation (applied on the fly inside the jitted step)
  c.augment = ml_collections.ConfigDict()
  c.augment.rotation = 10.0  # Degrees.
  c.augment.zoom = 0.1
  c.augment.shift = 0.1  # Fraction of height/width.
  c.augment.flip = False  # A flipped 2 is not a digit: ablation only.

  # Model
  c.model = ml_collections.ConfigDict()
  c.model.name = "classic"  # classic | strided
  c.model.dtype = "float32"  # Compute dtype: float32 | bfloat16 (params stay float32).
  c.model.kwargs = ml_collections.ConfigDict({
      "widths": (32, 64), "dense": 256, "dropout_conv": 0.25, "dropout_dense": 0.5,
      "batch_norm": False, "pool": "reshape"})

  # Optimizer
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "rmsprop"  # rmsprop | adam | sgd
  c.optimizer.lr = 1e-3
  c.optimizer.rho = 0.9  # RMSprop decay (Keras' rho).
  c.optimizer.eps = 1e-7  # Keras' epsilon.
  c.optimizer.momentum = 0.0

  # Learning-rate schedule
  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "plateau"  # plateau | constant | cosine | exponential | onecycle
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

  # Pseudo-labels: a trained run labels test.csv; its confident images join the training rows
  c.pseudo = ml_collections.ConfigDict()
  c.pseudo.teacher = ""  # The teacher's workdir ("" = none), e.g. runs/default from `dr-jax run`.
  c.pseudo.threshold = 0.99  # Least teacher probability for a test image to join.

  # Prediction (`dr-jax predict --tta N` overrides)
  c.predict = ml_collections.ConfigDict()
  c.predict.tta = 1  # Deterministic test-time transforms averaged (1 = none; see augment.py).
  return c


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Imports a Python config file and calls its `get_config()`; errors are one line."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"config file {path} not found; pass a file such as experiments/default.py")
  spec = importlib.util.spec_from_file_location(f"_dr_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  # Let an experiment import its sibling files (e.g. a shared ablation grid).
  sys.path.insert(0, str(path.parent))
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise UserError(f"config file {path} has no get_config() function")
    config = module.get_config()
  except UserError:
    raise
  except Exception as e:  # A user's config may raise anything; report where, in one line.
    if isinstance(e, SyntaxError):
      where = f"{pathlib.Path(e.filename or str(path)).name}:{e.lineno}"
    else:
      frame = traceback.extract_tb(e.__traceback__)[-1]
      where = f"{pathlib.Path(frame.filename).name}:{frame.lineno}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise UserError(f"config file {path} raised {type(e).__name__}: {first} (at {where})") from None
  finally:
    sys.path.remove(str(path.parent))
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"config file {path}: get_config() returned {type(config).__name__}, "
                    "expected an ml_collections.ConfigDict (start from dr_jax.config.get_base_config())")
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


VECTORIZE = ("auto", "vmap", "loop")  # How members share a program: build.loops_members.


def check(config: ml_collections.ConfigDict) -> None:
  """Validates keys and values that no type check catches, before any work starts."""
  # model.kwargs belong to the chosen model, which checks them when it is built.
  general = lambda c: {k for k in flatten(c) if not k.startswith("model.kwargs.")}
  unknown = sorted(general(config) - general(get_base_config()))
  if unknown:
    raise UserError(f"unknown config key(s) {', '.join(unknown)}; every key must exist in "
                    "dr_jax.config.get_base_config()")
  for key in ("num_epochs", "batch_size", "train.steps_per_call", "train.eval_batch_size",
              "ensemble.size"):
    if flatten(config)[key] < 1:
      raise UserError(f"config {key}={flatten(config)[key]} must be at least 1")
  if config.train.early_stop < 0:
    raise UserError(f"config train.early_stop={config.train.early_stop} must be 0 (off) or a "
                    "number of epochs")
  if not 0.0 <= config.augment.shift < 1.0 or not 0.0 <= config.augment.zoom < 1.0:
    raise UserError("config augment.shift and augment.zoom must lie in [0, 1)")
  if not 0.0 < config.pseudo.threshold <= 1.0:
    raise UserError(f"config pseudo.threshold={config.pseudo.threshold} must lie in (0, 1]")
  if config.optimizer.lr <= 0:
    raise UserError(f"config optimizer.lr={config.optimizer.lr} must be positive")
  from dr_jax import augment  # Here, not at the top: loading a config file needs no jax.

  augment.check_tta(config.predict.tta, f"config predict.tta={config.predict.tta}")
  if config.ensemble.vectorize not in VECTORIZE:
    raise UserError(f"config ensemble.vectorize={config.ensemble.vectorize!r} is not one of "
                    f"{', '.join(VECTORIZE)}")
