"""Every experiment config (and every variant of a grid file) loads, checks and trains on tiny data.

Each is trained for one epoch at tiny sizes (narrow model, at most 2 members) through
`train.train_and_evaluate`, so a config that a refactor broke fails here rather than an hour into
its real run. experiments/default.py (`dr-jax run`'s) is in the fast tier; the others are slow.
A variant that the tiny sizes make identical to an earlier one (a grid row that repeats a file, a
file that differs from another only in epochs or budget) is checked but not trained again.
"""

from __future__ import annotations

import json
import math
import pathlib

import ml_collections
import pytest

from dr_jax import config, pseudo, sweep, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments" / "default.py"
# As tests/test_config.py: "_" files are helpers, torch_baseline.py is the PyTorch benchmark.
EXPERIMENTS = [p for p in sorted(ROOT.glob("experiments/*.py"))
               + sorted(ROOT.glob("experiments/ablations/*.py"))
               if not p.name.startswith("_") and p.name != "torch_baseline.py"]
# Every config but default.py (it has its own test), each grid variant on its own: {name: (file,
# config)}.
CONFIGS = {name: (path, cfg) for path in EXPERIMENTS if path != DEFAULT
           for name, cfg in sweep.load_variants(path)}


def tiny(cfg: ml_collections.ConfigDict, fused: int = 1) -> ml_collections.ConfigDict:
  """`cfg` at tiny sizes: one epoch (no time limit) of batches of 32, narrow layers, at most 2
  members, at most `fused` steps per call. Fused steps are unrolled, so they take most of a
  config's compile (four variants took 81 s at 2, 46 s at 1, on one worker); default.py's test
  keeps 2, the fused path."""
  # No time limit: one sets the epoch count from this machine's speed, and tiny data is fast.
  overrides = ["num_epochs=1", "train.budget_minutes=0", "train.max_minutes=0", "batch_size=32",
               "data.subset=0", "train.eval_batch_size=50",
               f"train.steps_per_call={min(cfg.train.steps_per_call, fused)}"]
  if cfg.model.name in ("strided", "residual"):
    overrides.append("model.kwargs.widths=(8, 16, 32)")
  else:
    overrides += ["model.kwargs.widths=(8, 16)", "model.kwargs.dense=32"]
  if cfg.ensemble.size > 2:
    overrides.append("ensemble.size=2")
  return config.apply_overrides(cfg, overrides)


def _variants() -> tuple[list, dict[str, str]]:
  """(file, variant name) params of the configs to train, and {name: the earlier name it equals
  at tiny sizes} for the rest."""
  params, twins, first = [], {}, {}
  for name, (path, cfg) in CONFIGS.items():
    key = tiny(cfg).to_json(sort_keys=True)
    if key in first:
      twins[name] = first[key]
      continue
    first[key] = name
    params.append(pytest.param(path, name, id=str(path.relative_to(ROOT))
                               + ("" if name == path.stem else f":{name.split('/')[-1]}")))
  return params, twins


VARIANTS, TWINS = _variants()


@pytest.fixture(scope="module")
def data(kaggle_dir) -> pathlib.Path:
  """400 training images: a 2.5% validation split still holds one image of each class."""
  return kaggle_dir(n_train=400, n_test=20)


def train_tiny(cfg: ml_collections.ConfigDict, workdir: pathlib.Path,
               data_dir: pathlib.Path) -> dict:
  """Trains `cfg` (checked first) for its one epoch and checks what the run wrote."""
  config.check(cfg)
  summary = train.train_and_evaluate(cfg, workdir, data_dir, pseudo.for_config(cfg, data_dir))
  assert summary["epochs"] == 1 and 0 <= summary["best_val_accuracy"] <= 1
  (record,) = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
  assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
  assert record["images_per_s"] > 0
  assert (workdir / "checkpoints" / "best" / "1").is_dir()
  # The run records the config with what train.csv decided: its labels and image shape.
  recorded, given = json.loads((workdir / "config.json").read_text()), json.loads(cfg.to_json())
  assert (recorded["data"].pop("classes"), recorded["data"].pop("image_shape")) == \
      (list(range(10)), [28, 28, 1])
  assert (given["data"].pop("classes"), given["data"].pop("image_shape")) == ([], [])
  assert recorded == given
  return summary


@pytest.fixture(scope="module")
def default_run(data, tmp_path_factory) -> pathlib.Path:
  """experiments/default.py trained at tiny sizes; also the pseudo-label configs' teacher."""
  cfg = config.load_config(DEFAULT)
  config.check(cfg)
  workdir = tmp_path_factory.mktemp("default") / "run"
  train_tiny(tiny(cfg, fused=2), workdir, data)
  return workdir


def test_default_config_trains_on_tiny_data(default_run):
  """What trained is default.py with only its sizes made tiny: the strided CNN, one-cycle."""
  saved = json.loads((default_run / "config.json").read_text())
  expected = json.loads(tiny(config.load_config(DEFAULT), fused=2).to_json())
  expected["data"] |= {"classes": list(range(10)), "image_shape": [28, 28, 1]}
  assert saved == expected
  assert (saved["model"]["name"], saved["schedule"]["name"]) == ("strided", "onecycle")


def test_the_variants_cover_every_other_file_and_each_grid_row():
  """Each file and grid row trains, or is the twin of one that does: the same config once
  tiny() has set its sizes, epochs and budget."""
  trained = {p.values[1] for p in VARIANTS}
  assert {CONFIGS[n][0] for n in trained | set(TWINS)} == set(EXPERIMENTS) - {DEFAULT}
  assert set(TWINS.values()) <= trained and not set(TWINS) & trained
  for name, twin in TWINS.items():
    assert tiny(CONFIGS[name][1]).to_json() == tiny(CONFIGS[twin][1]).to_json()
  assert [n for n in CONFIGS if n.startswith("grid_schedules/")] == [
      f"grid_schedules/{name}" for name in ("onecycle", "plateau", "constant", "cosine",
                                            "exponential")]
  # Twins as the shipped files are now: quick.py is residual.py with a budget, budget15.py the
  # 30-epoch grid's residual row with one, and that grid's one-lever rows are the 6-epoch grid's.
  assert TWINS["residual"] == "quick"
  assert TWINS["grid_levers_30/label_smoothing_residual"] == "budget15"
  assert all(TWINS[f"grid_levers_30/{lever}"] == f"grid_levers/{lever}"
             for lever in ("elastic", "no_dropout", "ema", "label_smoothing"))


def test_configs_keep_the_label_smoothing_their_figures_were_measured_with():
  """default.py trains with label smoothing; the configs that load it and whose figures were
  measured without it (and the lever grids' baselines) set it to 0, so a change to default.py
  does not change what they measured. The 30-epoch grid's smoothing row is default.py."""
  assert config.load_config(DEFAULT).train.label_smoothing == 0.1
  for name in ("residual", "quick", "ensemble_cpu", "ensemble_cpu_pseudo", "final_fit",
               "grid_quick/strided", "grid_levers/baseline", "grid_levers_30/baseline"):
    assert CONFIGS[name][1].train.label_smoothing == 0.0, name
  shipped = config.apply_overrides(_uncapped_default(), ["model.kwargs.widths=(32, 64, 128)"])
  assert CONFIGS["grid_levers_30/label_smoothing"][1].to_json(sort_keys=True) == \
      shipped.to_json(sort_keys=True)


def test_configs_keep_the_widths_their_figures_were_measured_with():
  """default.py's strided CNN is narrower than the Kaggle recipe's (strided.py); the configs that
  load it and whose figures were measured at the recipe's widths (and the lever grids) set those
  back, so the narrower default does not change what they measured. The width grid's first row
  is default.py."""
  measured = (32, 64, 128)
  assert config.load_config(ROOT / "experiments" / "strided.py").model.kwargs.widths == measured
  assert config.load_config(DEFAULT).model.kwargs.widths == (24, 48, 96)
  for name in ("ensemble_cpu", "ensemble_cpu_pseudo", "final_fit", "grid_quick/strided",
               "grid_levers/baseline", "grid_levers_30/baseline", "grid_levers_30/elastic"):
    assert CONFIGS[name][1].model.kwargs.widths == measured, name
  assert CONFIGS["grid_widths_30/widths_24"][1].to_json(sort_keys=True) == \
      _uncapped_default().to_json(sort_keys=True)


def _uncapped_default() -> ml_collections.ConfigDict:
  """default.py at its 30 epochs however long they take: as the 30-epoch grids measured it."""
  return config.apply_overrides(config.load_config(DEFAULT), ["train.max_minutes=0"])


def test_configs_keep_the_epochs_their_figures_were_measured_with():
  """default.py trains 30 epochs or fewer where they would not end within 13 minutes; the
  configs that load it and whose figures were measured at a fixed epoch count set no cap, so
  a slower machine does not train fewer epochs than they measured. quick.py and budget15.py
  (and grid_quick's rows) set a budget, which decides alone; fashion_mnist.py keeps the cap."""
  assert (config.load_config(DEFAULT).num_epochs,
          config.load_config(DEFAULT).train.max_minutes) == (30, 13.0)
  for name in ("residual", "ensemble_cpu", "ensemble_cpu_pseudo", "final_fit",
               "grid_levers/baseline", "grid_levers_30/baseline", "grid_recipe_30/rmsprop",
               "grid_widths_30/widths_16"):
    assert CONFIGS[name][1].train.max_minutes == 0.0, name
  for name in ("quick", "budget15", "grid_quick/strided", "grid_quick_widths/strided_24"):
    assert CONFIGS[name][1].train.budget_minutes > 0, name
  assert CONFIGS["fashion_mnist"][1].train.max_minutes == 13.0


def test_the_seed_recipe_rows_are_default_py_with_one_change_each():
  """grid_recipe_30's rows are measured against default.py as shipped: each undoes one of its
  departures from the blog post's recipe and nothing else."""
  shipped = config.flatten(_uncapped_default())
  expected = {
      "no_augmentation": {"augment.rotation": 0.0, "augment.zoom": 0.0, "augment.shift": 0.0},
      "rmsprop": {"optimizer.name": "rmsprop"},
      "plateau": {"schedule.name": "plateau"},
      "no_batch_norm": {"model.kwargs.batch_norm": False}}
  rows = {n.split("/")[1]: c for n, (_, c) in CONFIGS.items() if n.startswith("grid_recipe_30/")}
  assert list(rows) == list(expected)
  for name, cfg in rows.items():
    flat = config.flatten(cfg)
    changed = {k: v for k, v in flat.items() if shipped.get(k, "absent") != v}
    assert changed == expected[name], name
    assert set(shipped) <= set(flat), name


@pytest.mark.slow
@pytest.mark.parametrize("path, name", VARIANTS)
def test_experiment_trains_on_tiny_data(path, name, data, tmp_path, request):
  cfg = CONFIGS[name][1]
  config.check(cfg)
  cfg = tiny(cfg)
  if cfg.pseudo.teacher:
    # Any teacher will do; a threshold of 0.1 lets every test image join (the top class of 10
    # always has at least that).
    cfg = config.apply_overrides(cfg, [f"pseudo.teacher={request.getfixturevalue('default_run')}",
                                       "pseudo.threshold=0.1"])
  train_tiny(cfg, tmp_path / "run", data)
  if cfg.pseudo.teacher:
    (record,) = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert record["pseudo_labels"]["rows"] == 20
