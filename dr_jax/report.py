"""`dr-jax report`: learning curves, confusion matrix, worst errors, filters and feature maps."""

from __future__ import annotations

import io
import math
import pathlib
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboardX import SummaryWriter

from dr_jax import build, data, evaluate, metrics, predict, steps
from dr_jax.errors import UserError
from dr_jax.fetch import ANSWERS_FILE
from dr_jax.files import atomic_write_bytes, atomic_write_text

DPI = 100
# Inches; at DPI each PNG is exactly figsize * DPI pixels (no tight bounding box).
FIGSIZES = {"learning_curves": (15.0, 4.0), "time_to_accuracy": (7.0, 4.0),
            "confusion_matrix": (7.0, 6.0), "worst_errors": (12.0, 9.0),
            "conv1_filters": (6.0, 6.0), "digit": (3.0, 3.0), "feature_maps": (8.0, 8.0)}
WORST_ERRORS = 24


# Pure computations.

def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts `(num_classes, num_classes)`: row = true label, column = predicted label."""
  flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predicted, np.int64)
  return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def worst_errors(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
  """Indices of up to `k` misclassified rows, most confident wrong prediction first."""
  predicted = probs.argmax(axis=-1)
  wrong = np.flatnonzero(predicted != labels)
  confidence = probs[wrong, predicted[wrong]]
  # Stable, so equally confident errors keep their dataset order (reproducible figures).
  return wrong[np.argsort(-confidence, kind="stable")][:k]


def first_conv_kernel(params: dict, channels: int = 1) -> np.ndarray:
  """The first layer's conv kernel `(kh, kw, channels, C)`."""
  # The conv kernels taking the input's channel count, the lowest-numbered module first
  # (Conv_2 before Conv_10), however a checkpoint orders them; a later layer can only match
  # when its width equals the channel count.
  numbered = lambda path: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", "/".join(path))]
  for path, value in sorted(traverse_util.flatten_dict(params).items(),
                            key=lambda item: numbered(item[0])):
    if path[-1] == "kernel" and value.ndim == 4 and value.shape[2] == channels:
      return np.asarray(value, np.float32)
  raise UserError("the model has no convolution on the input image; nothing to show as filters")


def feature_maps(apply_fn: Callable, variables: dict, image: jax.Array,
                 preprocess: steps.Preprocess) -> dict[str, jax.Array]:
  """Each conv layer's output `(H, W, C)` for one uint8 image `(height, width, channels)`, in
  call order."""
  x = data.normalize(jnp.asarray(image)[None], preprocess.shift, preprocess.scale)
  _, state = apply_fn(variables, x, train=False,
                      capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Conv),
                      mutable=["intermediates"])
  # Keys are (..., module name, "__call__"); the value holds one output per call.
  return {"/".join(path[:-1]): outputs[0][0]
          for path, outputs in traverse_util.flatten_dict(state["intermediates"]).items()}


def first_with_label(labels: np.ndarray, digit: int) -> int:
  """Index of the first row labelled `digit` (label values, not class indices)."""
  found = np.flatnonzero(np.asarray(labels) == digit)
  if not len(found):
    raise UserError(f"no validation image has label {digit}; pass another --digit")
  return int(found[0])


def _show(ax: Any, image: np.ndarray) -> None:
  """One image: grey for one channel, colour for three, the first channel otherwise."""
  if image.shape[-1] == 3:
    ax.imshow(image)
  else:
    ax.imshow(image[:, :, 0], cmap="gray")


# Figures (matplotlib's Agg canvas directly: headless, and no pyplot global state).

def _figure(kind: str) -> Figure:
  fig = Figure(figsize=FIGSIZES[kind], dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _grid(fig: Figure, n: int) -> list:
  """A near-square grid of `n` image axes without ticks."""
  cols = max(1, math.ceil(math.sqrt(n)))
  rows = max(1, math.ceil(n / cols))
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax in axes:
    ax.set_axis_off()
  return list(axes[:n])


def plot_learning_curves(records: list[dict]) -> Figure:
  """Train/val loss, train/val accuracy and learning rate per epoch, best epoch marked."""
  fig = _figure("learning_curves")
  axes = fig.subplots(1, 3)
  epochs = [r["epoch"] for r in records]
  best = max(records, key=lambda r: r["val_accuracy"])["epoch"]
  for ax, metric in zip(axes[:2], ("loss", "accuracy")):
    ax.plot(epochs, [r[f"train_{metric}"] for r in records], "o-", label="train")
    ax.plot(epochs, [r[f"val_{metric}"] for r in records], "o-", label="validation")
    ax.set_title(metric)
  axes[2].plot(epochs, [r["lr"] for r in records], "o-", color="tab:green")
  axes[2].set_title("learning rate")
  if all(r["lr"] > 0 for r in records):
    axes[2].set_yscale("log")
  for ax in axes:
    ax.axvline(best, color="gray", linestyle=":", label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  axes[0].legend()
  return fig


def plot_time_to_accuracy(records: list[dict], target: float) -> Figure:
  """Validation accuracy against wall-clock minutes, the target and where it was first met."""
  fig = _figure("time_to_accuracy")
  ax = fig.subplots()
  minutes = metrics.elapsed_minutes(records)
  ax.plot(minutes, [metrics.val_accuracy(r) for r in records], "o-", label="validation")
  ax.axhline(target, color="gray", linestyle=":", label=f"target {target:.4f}")
  reached = metrics.time_to_accuracy(records, target)
  if reached:
    ax.axvline(reached[1], color="tab:green", linestyle="--",
               label=f"reached at {reached[1]:.1f} min (epoch {reached[0]})")
  timed = all("elapsed_s" in r for r in records)
  ax.set_xlabel("wall-clock minutes since the run started" if timed
                else "minutes of training (epochs only)")
  ax.set_ylabel("validation accuracy")
  ax.set_title("time to accuracy")
  ax.ticklabel_format(axis="y", useOffset=False)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  return fig


def plot_confusion(counts: np.ndarray, classes: tuple[int, ...] | None = None) -> Figure:
  """The confusion matrix with every non-zero count written in its cell, ticks named by label."""
  fig = _figure("confusion_matrix")
  ax = fig.subplots()
  image = ax.imshow(counts, cmap="Blues")
  fig.colorbar(image, ax=ax)
  for (true, pred), count in np.ndenumerate(counts):
    if count:
      ax.text(pred, true, str(count), ha="center", va="center", fontsize=8,
              color="white" if count > counts.max() / 2 else "black")
  ticks = range(len(counts))
  names = [str(c) for c in (classes or ticks)]
  ax.set_xticks(ticks, names)
  ax.set_yticks(ticks, names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  errors = int(counts.sum() - np.trace(counts))
  ax.set_title(f"validation: {errors} errors of {int(counts.sum())}")
  return fig


def plot_worst_errors(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                      indices: np.ndarray, classes: tuple[int, ...] | None = None) -> Figure:
  """The given misclassified images, each titled true → predicted (confidence); `labels` are
  label values, `probs` columns follow `classes` (default 0, 1, …)."""
  classes = classes or tuple(range(probs.shape[-1]))
  fig = _figure("worst_errors")
  if not len(indices):
    fig.text(0.5, 0.5, "no misclassified validation images", ha="center", va="center")
    return fig
  for ax, i in zip(_grid(fig, len(indices)), indices):
    pred = int(probs[i].argmax())
    _show(ax, images[i])
    ax.set_title(f"true {labels[i]} → {classes[pred]}\n{probs[i, pred]:.1%}", fontsize=9)
  fig.suptitle("most confident validation errors")
  return fig


def plot_filters(kernel: np.ndarray, which: str = "") -> Figure:
  """First-layer filters `(kh, kw, channels, C)` on the first input channel, one cell each;
  `which` names the network."""
  fig = _figure("conv1_filters")
  # One symmetric colour scale for all filters, so their weights compare across cells.
  limit = float(np.abs(kernel).max()) or 1.0
  for c, ax in enumerate(_grid(fig, kernel.shape[-1])):
    ax.imshow(kernel[:, :, 0, c], cmap="RdBu_r", vmin=-limit, vmax=limit)
  fig.suptitle(f"first conv layer{which}: {kernel.shape[-1]} filters of {kernel.shape[0]}×"
               f"{kernel.shape[1]} (red +, blue −)")
  return fig


def plot_digit(image: np.ndarray, title: str) -> Figure:
  """One input image."""
  fig = _figure("digit")
  ax = fig.subplots()
  _show(ax, image)
  ax.set_axis_off()
  ax.set_title(title, fontsize=9)
  return fig


def plot_feature_maps(maps: np.ndarray, title: str) -> Figure:
  """One layer's activations `(H, W, C)`, one channel per cell."""
  fig = _figure("feature_maps")
  for c, ax in enumerate(_grid(fig, maps.shape[-1])):
    ax.imshow(maps[:, :, c], cmap="viridis")
  fig.suptitle(title)
  return fig


def save_figure(fig: Figure, path: pathlib.Path) -> pathlib.Path:
  """Writes `fig` as a PNG atomically and returns the path."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  atomic_write_bytes(path, buffer.getvalue())
  return path


# The command.

def _test_accuracy(workdir: pathlib.Path, data_dir: pathlib.Path) -> float | None:
  submission, answers = workdir / "submission.csv", data_dir / ANSWERS_FILE
  if submission.is_file() and answers.is_file():
    return predict.score(submission, answers)
  return None


def make_report(workdir: pathlib.Path, data_dir: pathlib.Path,
                digit: int | None = None) -> pathlib.Path:
  """Writes the figures and `index.md` into WORKDIR/report/ and returns index.md's path."""
  workdir, data_dir = pathlib.Path(workdir), pathlib.Path(data_dir)
  records = metrics.read_metrics(workdir)
  # The split is rebuilt from the run's own config so "validation" means the same images.
  cfg, split = build.load_run_split(workdir, data_dir)
  predictor = evaluate.load_predictor(workdir)
  images, indices = split.val.images, split.val.labels
  assert indices is not None  # A split's rows are all labelled.
  labels = np.asarray(split.classes)[indices]  # Label values, as the figures name them.
  if digit is None:
    digit = 7 if 7 in split.classes else split.classes[0]
  own_split = cfg.ensemble.own_split and predictor.members > 1
  # As `dr-jax predict` computes them (the run's TTA); with own splits, only member 0 never
  # trained on these images.
  probs = (predictor.member(0) if own_split else predictor).probabilities(images)
  counts = confusion_counts(indices, probs.argmax(axis=-1), len(split.classes))
  worst = worst_errors(indices, probs, WORST_ERRORS)
  chosen = first_with_label(labels, digit)
  # Filters and feature maps belong to one network: an ensemble's first member.
  member = jax.tree.map(lambda x: x[0], predictor.variables)
  which = f" (member 0 of {predictor.members})" if predictor.members > 1 else ""
  maps = feature_maps(predictor.apply_fn, member, images[chosen], predictor.preprocess)

  out = workdir / "report"
  target = cfg.train.get("target_accuracy", 0.995)  # Runs trained before the key: its default.
  figures = {"learning_curves": plot_learning_curves(records),
             "time_to_accuracy": plot_time_to_accuracy(records, target),
             "confusion_matrix": plot_confusion(counts, split.classes),
             "worst_errors": plot_worst_errors(images, labels, probs, worst, split.classes),
             "conv1_filters": plot_filters(first_conv_kernel(member["params"], images.shape[-1]),
                                          which),
             "digit": plot_digit(images[chosen], f"validation image {chosen} (label {digit})")}
  for name, value in maps.items():
    figures[f"feature_maps_{name.replace('/', '_')}"] = plot_feature_maps(
        np.asarray(value, np.float32), f"{name} output {tuple(value.shape)}{which} for "
        f"validation image {chosen} (label {digit})")
  paths = {name: save_figure(fig, out / f"{name}.png") for name, fig in figures.items()}

  step = records[-1]["epoch"]
  writer = SummaryWriter(str(workdir / "tensorboard"))
  writer.add_figure("report/confusion_matrix", figures["confusion_matrix"], step, close=False)
  # The figure the PNG holds (labels and confidences in its titles), under one stable tag.
  writer.add_figure("report/worst_errors", figures["worst_errors"], step, close=False)
  writer.close()

  test_accuracy = _test_accuracy(workdir, data_dir)
  index = out / "index.md"
  atomic_write_text(index, _index_text(workdir, records, predictor, counts, test_accuracy, paths,
                                       " (member 0)" if own_split else "", target,
                                       bool(cfg.train.get("final_fit", False))))
  return index


def _reached_text(records: list[dict], target: float) -> str:
  reached = metrics.time_to_accuracy(records, target)
  return (f"{reached[1]:.1f} min (epoch {reached[0]})" if reached
          else f"not reached in {records[-1]['epoch']} epochs")


def _index_text(workdir: pathlib.Path, records: list[dict], predictor: evaluate.Predictor,
                counts: np.ndarray, test_accuracy: float | None,
                paths: dict[str, pathlib.Path], by: str, target: float,
                final_fit: bool) -> str:
  """The markdown page: a short results table, then every figure by relative link."""
  n, errors = int(counts.sum()), int(counts.sum() - np.trace(counts))
  test = f"{test_accuracy:.4f}" if test_accuracy is not None else \
      f"n/a (needs submission.csv in the run and {ANSWERS_FILE} in the data dir)"
  mean = " (mean of the members' best)" if predictor.members > 1 else ""
  assert predictor.run is not None  # Loaded from its checkpoint.
  lines = [f"# Report: {workdir}", "", "| | |", "|---|---|",
           f"| best epoch | {predictor.run.epoch} of {records[-1]['epoch']} |",
           f"| best val accuracy{mean} | {predictor.run.best_val_accuracy:.4f} |",
           f"| val errors below{by} | {errors} of {n} (accuracy {(n - errors) / n:.4f}) |",
           f"| time to val accuracy {target:.4f} | {_reached_text(records, target)} |",
           f"| test accuracy | {test} |", ""]
  if predictor.members > 1:
    lines.insert(4, f"| ensemble members | {predictor.members} |")
  if final_fit:
    lines += ["A final fit (train.final_fit): it trained on the validation images too and kept "
              "its last epoch, so the validation figures here are not held out; only the test "
              "accuracy is.", ""]
  captions = {"learning_curves": "Learning curves", "time_to_accuracy": "Time to accuracy",
              "confusion_matrix": "Confusion matrix (validation)",
              "worst_errors": "Most confident errors (validation)",
              "conv1_filters": "First-layer filters", "digit": "Feature maps: input image"}
  for name, path in paths.items():
    caption = captions.get(name, f"Feature maps: {name.removeprefix('feature_maps_')}")
    lines += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
  return "\n".join(lines)
