"""Golden metrics of fixed tiny runs: a safety net for changes that should not change training.

Each run trains a tiny config through the public API (`train.train_and_evaluate`, then
`predict.predict`) on the synthetic dataset of conftest.py, reads back what it wrote
(metrics.jsonl, the summary, submission.csv) and compares it with tests/golden/tiny_runs.json.
A change in the split, shuffling, initialisation, augmentation, schedule, evaluation,
best-epoch choice or submission format moves these numbers; a pure refactoring does not.

Floats are compared with a tolerance (relative 1e-4, absolute 1e-5), learning rates to 1e-7
relative, training accuracy to one image, epochs and submission lines exactly. Validation
accuracies count 30 images, so one image more or less right (3.3e-2) always fails. The runs are
chosen to compute the same bits, or within 1e-5 relative, under XLA_FLAGS=--xla_cpu_max_isa=AVX2
as with AVX-512 and on 1 thread as on 2 (see GENTLE); the tolerance is headroom for small
reassociation, not for chaos.

Regenerate after an intended change of training behaviour (and say why in the commit message):

    python tests/test_golden.py --update
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
from typing import Callable

if __name__ == "__main__":  # As a script: this checkout's dr_jax, not an installed one.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import ml_collections
import pytest

from dr_jax import predict, train
from conftest import tiny_config, write_kaggle_dir

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden" / "tiny_runs.json"
MESSAGE = ("golden metrics changed: if this change of training behaviour is intended, regenerate "
           "with `python tests/test_golden.py --update` and say why in the commit message")
FLOAT_TOL = {"rel": 1e-4, "abs": 1e-5}
LR_TOL = {"rel": 1e-7, "abs": 0.0}
# Training accuracy: within one of an epoch's 256 images. Its argmaxes over augmented batches of
# a barely trained model can flip on a last-bit change (one did, with rotation on under AVX2);
# train_loss, to 1e-4, pins the batches themselves.
TRAIN_ACCURACY_TOL = {"rel": 0.0, "abs": 1.01 / 256}

# 320 training rows of which data.subset keeps 300 (270 train / 30 validation), 20 test images.
DATA = {"n_train": 320, "n_test": 20, "seed": 0}
SUBSET = 300

# Reproducible across CPUs. Training on 270 images is chaotic at the recipes' learning rates:
# with RMSprop at 1e-3, a last-bit difference in one step (another summation order: 1 thread
# instead of 2; XLA_FLAGS=--xla_cpu_max_isa=AVX2 instead of AVX-512 with rotation on) grows to
# 5e-4 (1 thread) or 3e-2 (AVX2) relative in the validation loss within three epochs, then
# flips training-accuracy counts and the best epoch; no tolerance absorbs that. So the runs
# train gently (RMSprop or Adam at 1e-4, or two epochs), where such differences stay below 2e-5
# (measured with rotation on under AVX2), and without rotation, whose sin/cos inside the fused
# train step round differently under AVX2 (zoom, shift and the convolutions compute the same
# bits). test_augment.py tests rotation.
GENTLE = {"optimizer.lr": 1e-4, "augment.rotation": 0.0}


def classic_plateau() -> ml_collections.ConfigDict:
  """The seed recipe (classic CNN, RMSprop, ReduceLROnPlateau on validation accuracy, dropout,
  zoom and shift augmentation), narrow and gentle. Patience 1 and 8 epochs: the plateau halves
  the learning rate from epoch 3 down to min_lr, and later epochs tie the best accuracy at a
  lower loss (the tie-break of train.is_better). Fused calls of 3 steps, then 2 single steps."""
  return tiny_config(**{"num_epochs": 8, "data.subset": SUBSET, "schedule.patience": 1,
                        "train.steps_per_call": 3, **GENTLE})


def strided() -> ml_collections.ConfigDict:
  """experiments/strided.py narrowed (batch-norm, stride-2 convs: space-to-depth on CPU, Adam);
  a one-cycle schedule (experiments/default.py's, applied per step by optax) and standardize
  normalisation, so the shift is not 0. At Adam's 1e-3 but two epochs only: batch-norm's
  reductions sum in another order under AVX2 and Adam amplifies that, to 1e-8 relative after
  these two epochs but 4e-4 after three (measured without augmentation)."""
  cfg = tiny_config(**{"num_epochs": 2, "data.subset": SUBSET, "model.name": "strided",
                       "optimizer.name": "adam", "schedule.name": "onecycle",
                       "data.normalization": "standardize", "train.steps_per_call": 1,
                       "augment.rotation": 0.0})
  cfg.model.kwargs = ml_collections.ConfigDict({"widths": (8, 16, 32), "dropout": 0.4,
                                               "space_to_depth": True})
  return cfg


def ensemble() -> ml_collections.ConfigDict:
  """Two classic members trained together on one split (an ensemble accuracy too), each with its
  own plateau state. Factor 1e-300 (config.check allows no 0) and min_lr 0: a cut learning rate
  rounds to 0 in float32, so a member whose accuracy stops improving stops training and its
  later epochs tie its best exactly (same loss), which must not move its best epoch (pins `>` in
  train.is_better)."""
  return tiny_config(**{"num_epochs": 5, "data.subset": SUBSET, "ensemble.size": 2,
                        "schedule.patience": 1, "schedule.factor": 1e-300,
                        "schedule.min_lr": 0.0, "train.steps_per_call": 1, **GENTLE})


def residual_final_fit() -> ml_collections.ConfigDict:
  """experiments/residual.py narrowed (residual blocks, batch-norm, global average pooling, Adam,
  one-cycle) as a final fit: all 300 rows train and the last epoch is kept, although epoch 1's
  validation accuracy is the same at a lower loss (pins train.final_fit's keep-last rule). Gentle
  (Adam at 1e-4) because batch-norm and Adam amplify a reduction order: at 2e-3 the third epoch's
  training loss moved by 3.5e-4 relative between 1 and 2 threads, and between AVX2 and
  AVX-512 boxes; at 1e-4, by at most 1.1e-6 (measured with 1 and 2 threads under each ISA limit
  from SSE4.2 to AVX-512). The net learns little in three epochs that way; the golden pins its
  losses, not its skill."""
  cfg = tiny_config(**{"num_epochs": 3, "data.subset": SUBSET, "model.name": "residual",
                       "optimizer.name": "adam", "schedule.name": "onecycle",
                       "train.final_fit": True, "train.steps_per_call": 1, **GENTLE})
  cfg.model.kwargs = ml_collections.ConfigDict({"widths": (8, 16, 32), "blocks": 1,
                                               "dropout": 0.0, "pool": "reshape"})
  return cfg


RUNS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "classic_rmsprop_plateau": classic_plateau, "strided": strided, "ensemble2": ensemble,
    "residual_final_fit": residual_final_fit}

PER_EPOCH_FLOATS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
PER_EPOCH_EXTRA = ("val_accuracy_members", "val_accuracy_ensemble")  # Ensembles only.


def observe(name: str, data_dir: pathlib.Path, workdir: pathlib.Path) -> dict:
  """Trains and predicts run `name` in `workdir`; returns what the golden pins, from disk."""
  summary = train.train_and_evaluate(RUNS[name](), workdir, data_dir)
  predict.predict(workdir, data_dir)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  result = {"epochs": [r["epoch"] for r in records]}
  for key in (*PER_EPOCH_FLOATS, *PER_EPOCH_EXTRA, "lr", "lr_members"):
    if key in records[0]:
      result[key] = [r[key] for r in records]
  result["best_epoch_per_epoch"] = [r["best_epoch"] for r in records]
  result["best_epoch"] = summary["best_epoch"]
  result["best_val_accuracy"] = summary["best_val_accuracy"]
  lines = (workdir / "submission.csv").read_text().splitlines()
  result["submission_rows"] = len(lines) - 1
  result["submission_head"] = lines[:11]  # The header and the first ten ImageId,Label rows.
  return result


def _flat(value) -> list:
  return [x for v in value for x in _flat(v)] if isinstance(value, list) else [value]


def differences(observed: dict, expected: dict) -> list[str]:
  """One line per pinned quantity that differs beyond its tolerance."""
  out = []
  for key in sorted(set(observed) | set(expected)):
    got, want = observed.get(key), expected.get(key)
    if got is None or want is None:
      out.append(f"{key}: observed {got!r}, golden {want!r}")
      continue
    if key.startswith("lr"):
      tol = LR_TOL
    elif key == "train_accuracy":
      tol = TRAIN_ACCURACY_TOL
    elif key in (*PER_EPOCH_FLOATS, *PER_EPOCH_EXTRA, "best_val_accuracy"):
      tol = FLOAT_TOL
    else:
      tol = None  # Epochs, counts and submission lines: exact.
    if tol is None:
      same = got == want
    else:
      g, w = _flat(got), _flat(want)
      same = len(g) == len(w) and g == pytest.approx(w, **tol)
    if not same:
      out.append(f"{key}:\n    observed {got!r}\n    golden   {want!r}")
  return out


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory) -> pathlib.Path:
  return write_kaggle_dir(tmp_path_factory.mktemp("golden_data"), **DATA)


# 20-50 s a run on 2 busy cores, most of it XLA compiling (5-10 s from a warm persistent
# compilation cache): the seed recipe's run stays in the fast tier, so the README's test command
# catches a change of the split, shuffling, plateau rule, best-epoch rule, evaluation or
# submission; the strided and ensemble runs are end-to-end tier.
@pytest.mark.parametrize("name", [
    name if name == "classic_rmsprop_plateau" else pytest.param(name, marks=pytest.mark.slow)
    for name in RUNS])
def test_golden_metrics(name, golden_data, tmp_path):
  golden = json.loads(GOLDEN.read_text())["runs"]
  assert name in golden, f"no golden for run {name!r}; {MESSAGE}"
  diffs = differences(observe(name, golden_data, tmp_path / name), golden[name])
  assert not diffs, f"{MESSAGE}\nrun {name!r}:\n  " + "\n  ".join(diffs)


def test_the_goldens_cover_the_rules_they_are_configured_for():
  """Why the configs are what they are: without these cases the goldens pin nothing of the rules."""
  runs = json.loads(GOLDEN.read_text())["runs"]
  classic, members = runs["classic_rmsprop_plateau"], runs["ensemble2"]
  # The plateau cuts the learning rate, down to min_lr.
  assert classic["lr"][0] == pytest.approx(1e-4) and classic["lr"][-1] == pytest.approx(1e-5)
  assert len(set(classic["lr"])) > 2, classic["lr"]
  # A later epoch ties the best accuracy at a lower loss and becomes the best.
  acc = classic["val_accuracy"]
  assert any(acc[e] == max(acc[:e]) and classic["best_epoch_per_epoch"][e] == e + 1
             for e in range(1, len(acc))), "no tie broken by the loss"
  # A final fit keeps its last epoch, also after a better one (train.is_better's order: a higher
  # accuracy, or the same at a lower loss).
  fit = runs["residual_final_fit"]
  assert fit["best_epoch_per_epoch"] == fit["epochs"]
  last = (fit["val_accuracy"][-1], -fit["val_loss"][-1])
  assert any((acc, -loss) > last for acc, loss in zip(fit["val_accuracy"], fit["val_loss"]))
  # Frozen members (lr 0) repeat an epoch's validation loss exactly; that tie is not a new best.
  loss = members["val_loss"]
  assert any(loss[e] == loss[e - 1] and members["best_epoch_per_epoch"][e] < e + 1
             for e in range(1, len(loss))), "no tie at the same loss"


def _json(runs: dict) -> str:
  """The golden file: one line per pinned quantity, so a regeneration diffs readably."""
  blocks = []
  for name, run in runs.items():
    fields = ",\n".join(f"   {json.dumps(k)}: {json.dumps(v)}" for k, v in run.items())
    blocks.append(f"  {json.dumps(name)}: {{\n{fields}\n  }}")
  about = ("Golden metrics of tests/test_golden.py; regenerate with "
           "`python tests/test_golden.py --update` after an intended change.")
  return f'{{\n "about": {json.dumps(about)},\n "runs": {{\n' + ",\n".join(blocks) + "\n }\n}\n"


def update() -> None:
  """Reruns every golden run and rewrites tests/golden/tiny_runs.json."""
  import dr_jax
  print(f"dr_jax from {pathlib.Path(dr_jax.__file__).parent}", file=sys.stderr)
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = write_kaggle_dir(pathlib.Path(tmp) / "data", **DATA)
    runs = {name: observe(name, data_dir, pathlib.Path(tmp) / name) for name in RUNS}
  GOLDEN.parent.mkdir(exist_ok=True)
  GOLDEN.write_text(_json(runs))
  print(f"wrote {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
  if sys.argv[1:] != ["--update"]:
    sys.exit("usage: python tests/test_golden.py --update")
  update()
