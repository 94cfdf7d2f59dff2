"""`dr-jax sweep`: configs × seeds, resumable after a kill, with mean ± std per config."""

from __future__ import annotations

import ast
import csv
import dataclasses
import io
import json
import pathlib
import re
import time
from typing import Any, Sequence

import ml_collections
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dr_jax import budget, config, metrics, predict, provenance, pseudo, report, train
from dr_jax.build import RESOLVED_KEYS
from dr_jax.errors import UserError
from dr_jax.fetch import ANSWERS_FILE
from dr_jax.files import atomic_write_text

# --quick: two epochs on the first 2,000 training rows, enough to smoke-test a sweep's configs
# in minutes; no time limit, which would set the epoch count from the machine's speed instead.
# Applied before --config.KEY=VALUE overrides, which can change them again.
QUICK_OVERRIDES = ("num_epochs=2", "train.budget_minutes=0", "train.max_minutes=0",
                   "data.subset=2000")
RESULT = "result.json"
COLUMNS = ("config", "seed_index", "seed", "status", "best_val_accuracy", "test_accuracy",
           "best_epoch", "epochs", "wall_s", "minutes_to_target", "images_per_s", "resumed",
           "run_dir", "final_fit", "last_val_accuracy")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class Run:
  """One config and seed of a sweep, and the directory it trains in."""

  name: str
  seed_index: int
  cfg: ml_collections.ConfigDict
  run_dir: pathlib.Path


def _defines_grid(path: pathlib.Path) -> bool:
  """Whether the file defines a top-level get_grid(), found without running it."""
  try:
    tree = ast.parse(path.read_text())
  except SyntaxError:
    return False  # config.load_config reports it with the file and line.
  return any(isinstance(node, ast.FunctionDef) and node.name == "get_grid" for node in tree.body)


def _load_grid(path: pathlib.Path) -> list[tuple[str, ml_collections.ConfigDict]]:
  """Imports a config file (its siblings importable, as for get_config) and calls get_grid()."""
  module = config.load_module(path)
  with config.user_code(path):
    grid = list(module.get_grid())
  if not grid:
    raise UserError(f"config file {path}: get_grid() returned no variants")
  for item in grid:
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], ml_collections.ConfigDict)):
      raise UserError(f"config file {path}: get_grid() must return (name, ConfigDict) pairs, "
                      f"got {type(item).__name__} {str(item)[:60]!r}")
  return grid


def load_variants(path: pathlib.Path) -> list[tuple[str, ml_collections.ConfigDict]]:
  """A config file's (name, config) rows: one per get_grid() variant, else its get_config()."""
  path = config.find_config(path)  # A shipped name ("ablations/grid_schedules") works too.
  if _defines_grid(path):
    return [(f"{path.stem}/{name}", cfg) for name, cfg in _load_grid(path)]
  return [(path.stem, config.load_config(path))]


def plan(paths: Sequence[pathlib.Path], seeds: int, workdir: pathlib.Path,
         overrides: Sequence[str] = (), quick: bool = False) -> list[Run]:
  """Every run of the sweep, configs checked up front so a typo fails before hours of training."""
  if seeds < 1:
    raise UserError(f"--seeds {seeds}: need at least 1 seed per config")
  overrides = [*QUICK_OVERRIDES, *overrides] if quick else list(overrides)
  runs, names = [], set()
  for path in paths:
    for name, cfg in load_variants(path):
      if not all(_NAME.fullmatch(part) for part in name.split("/")):
        raise UserError(f"{path}: config name {name!r} must be letters, digits, '_', '-' or '.'")
      if name in names:
        raise UserError(f"two configs are named {name!r}; rename one (each gets the directory "
                        f"{workdir / name})")
      names.add(name)
      cfg = config.apply_overrides(cfg, overrides)
      try:
        config.check(cfg)
      except UserError as e:  # Say which of the sweep's configs it is.
        where = path if name == pathlib.Path(path).stem else f"{path} ({name})"
        raise UserError(f"{where}: {e}") from None
      for i in range(seeds):
        runs.append(Run(name, i, config.apply_overrides(cfg, [f"seed={cfg.seed + i}"]),
                        pathlib.Path(workdir) / name / f"seed{i}"))
  return runs


def _check_same_config(run: Run) -> None:
  """Refuses to resume or reuse a run directory trained with another config."""
  if not (run.run_dir / "config.json").is_file():
    return
  saved_cfg = provenance.read_config(run.run_dir)
  saved, wanted = config.flatten(saved_cfg), config.flatten(run.cfg)
  # What train.csv decided is recorded (build.resolve); a sweep's () asks for exactly that.
  # Under a time limit (a budget or a cap) both sides set, the epoch count is measured, not
  # asked for: only the limit itself can differ.
  budgeted = budget.limit(saved_cfg) is not None and budget.limit(run.cfg) is not None
  diff = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k)
                and not (k in RESOLVED_KEYS and wanted.get(k) == ())
                and not (k == "num_epochs" and budgeted))
  if diff:
    key = diff[0]
    raise UserError(f"{run.run_dir} was trained with {key}={saved.get(key)!r}, this sweep has "
                    f"{wanted.get(key)!r}; use another --workdir or delete {run.run_dir}")


def run_one(run: Run, data_dir: pathlib.Path) -> dict[str, Any]:
  """Trains (or resumes), predicts and scores one run, then writes its result.json atomically."""
  data_dir = pathlib.Path(data_dir)
  metrics_file = run.run_dir / "metrics.jsonl"
  resumed = metrics_file.is_file() and bool(metrics_file.read_text().strip())
  result = {"config": run.name, "seed_index": run.seed_index, "seed": run.cfg.seed,
            "status": "ok", "best_val_accuracy": None, "test_accuracy": None,
            "best_epoch": None, "epochs": run.cfg.num_epochs, "wall_s": None,
            "minutes_to_target": None, "images_per_s": None, "resumed": resumed,
            "run_dir": str(run.run_dir), "final_fit": bool(run.cfg.train.final_fit),
            "last_val_accuracy": None}
  start = time.time()
  try:
    summary = train.train_and_evaluate(run.cfg, run.run_dir, data_dir,
                                       pseudo.for_config(run.cfg, data_dir))
  except train.TrainingDiverged as e:
    # Deterministic for this config and seed, so it is recorded (not retried) and the sweep
    # goes on with the other runs.
    metrics.log(f"{run.name} seed{run.seed_index}: {e}")
    result.update(status="diverged", error=str(e))
  else:
    out, _ = predict.predict(run.run_dir, data_dir)
    answers = data_dir / ANSWERS_FILE
    result.update(best_val_accuracy=summary["best_val_accuracy"],
                  best_epoch=summary["best_epoch"], epochs=summary["epochs"],
                  test_accuracy=predict.score(out, answers) if answers.is_file() else None)
    result.update(record_figures(run))
    result.update(validation_figures(run, data_dir))
  # For a resumed run this is the time of the session that finished it (see `resumed`).
  result["wall_s"] = time.time() - start
  atomic_write_text(run.run_dir / RESULT, json.dumps(result, indent=2) + "\n")
  return result


def record_figures(run: Run) -> dict[str, Any]:
  """A finished run's figures from its metrics.jsonl; none of validation for a final fit.

  Best validation accuracy is a maximum over epochs, so it favours a noisier run; the last
  epoch's is an estimate free of that choice. A final fit trains on its validation images, so
  their accuracy measures nothing held out.
  """
  records = metrics.read_metrics(run.run_dir)
  figures = {"final_fit": bool(run.cfg.train.final_fit),
             "images_per_s": float(np.mean([r["images_per_s"] for r in records]))}
  if run.cfg.train.final_fit:
    return figures | {"best_val_accuracy": None, "last_val_accuracy": None,
                      "minutes_to_target": None}
  reached = metrics.time_to_accuracy(records, run.cfg.train.target_accuracy)
  return figures | {"last_val_accuracy": metrics.val_accuracy(records[-1]),
                    "minutes_to_target": reached[1] if reached else None}


def validation_figures(run: Run, data_dir: pathlib.Path) -> dict[str, Any]:
  """The key of a run's validation rows and the rows its best checkpoint misses, for pairing
  configs image by image; none for a final fit or for members on their own splits."""
  if run.cfg.train.final_fit or (run.cfg.ensemble.size > 1 and run.cfg.ensemble.own_split):
    return {"val_split": None, "val_wrong": None}
  key, wrong = predict.validation_misses(run.run_dir, pathlib.Path(data_dir))
  return {"val_split": key, "val_wrong": wrong}


def sweep(paths: Sequence[pathlib.Path], seeds: int, workdir: pathlib.Path,
          data_dir: pathlib.Path, overrides: Sequence[str] = (),
          quick: bool = False) -> list[dict[str, Any]]:
  """Runs every config × seed not finished yet and writes results.csv/.md/.png in `workdir`."""
  workdir = pathlib.Path(workdir)
  runs = plan(paths, seeds, workdir, overrides, quick)
  for run in runs:
    _check_same_config(run)
  results = []
  for k, run in enumerate(runs, start=1):
    where = f"[{k}/{len(runs)}] {run.name} seed{run.seed_index} (seed {run.cfg.seed})"
    done = run.run_dir / RESULT
    if done.is_file():
      metrics.log(f"{where}: finished earlier, skipped")
      result = json.loads(done.read_text())
      if result["status"] == "ok" and "val_wrong" not in result:
        # Written before the paired figures existed: computed once from its best checkpoint.
        result |= validation_figures(run, data_dir)
        atomic_write_text(done, json.dumps(result, indent=2) + "\n")
      # Recomputed, so a result.json written before a figure existed gets it too.
      results.append(result | record_figures(run) if result["status"] == "ok" else result)
      continue
    metrics.log(f"{where}: training in {run.run_dir}")
    results.append(run_one(run, data_dir))
    # Rewritten after every run, so an unattended sweep's progress can be read at any time.
    write_results(workdir, results)
  write_results(workdir, results)
  return results


def _mean_std(values: list[float]) -> tuple[float, float] | None:
  """Mean and sample standard deviation (0 for one value); None for no values."""
  if not values:
    return None
  return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per config (in sweep order): finished and diverged run counts, mean ± std of each metric."""
  rows = []
  for name in dict.fromkeys(r["config"] for r in results):
    ok = [r for r in results if r["config"] == name and r["status"] == "ok"]
    row = {"config": name, "n": len(ok),
           "diverged": sum(r["config"] == name and r["status"] == "diverged" for r in results)}
    for key in ("best_val_accuracy", "last_val_accuracy", "test_accuracy", "best_epoch",
                "wall_s", "minutes_to_target", "images_per_s"):
      # .get: a diverged run's result.json, or one written before a figure existed, lacks it.
      row[key] = _mean_std([r[key] for r in ok if r.get(key) is not None])
    row["reached"] = sum(r.get("minutes_to_target") is not None for r in ok)
    row["final_fit"] = bool(ok) and all(r.get("final_fit") for r in ok)
    rows.append(row)
  return rows


def paired_with_first(results: list[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
  """Per config after the first: validation images only the first config's run misses and only
  this config's, summed over the seeds whose runs of both validated on the same rows, and that
  count of seeds."""
  names = list(dict.fromkeys(r["config"] for r in results))
  first = {r["seed_index"]: r for r in results
           if r["config"] == names[0] and r["status"] == "ok" and r.get("val_split")}
  paired = {}
  for name in names[1:]:
    only_first = only_this = seeds = 0
    for r in results:
      base = first.get(r.get("seed_index"))
      if r["config"] == name and r["status"] == "ok" and base and \
          r.get("val_split") == base["val_split"]:
        a, b = set(base["val_wrong"]), set(r["val_wrong"])
        only_first, only_this, seeds = only_first + len(a - b), only_this + len(b - a), seeds + 1
    paired[name] = (only_first, only_this, seeds)
  return paired


def _paired_cell(name: str, first: str, paired: dict[str, tuple[int, int, int]]) -> str:
  """`only the first / only this, p` for a config paired with the first config."""
  if name == first:
    return "(reference)"
  only_first, only_this, seeds = paired[name]
  if not seeds:
    return "–"
  return (f"{only_first} / {only_this}, p {predict.sign_test_p(only_first, only_this):.3f}"
          f" ({seeds} seed{'s' if seeds > 1 else ''})")


def _fmt(stat: tuple[float, float] | None, digits: int, n: int) -> str:
  if stat is None:
    return "–"
  mean, std = stat
  return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _target_cell(row: dict[str, Any]) -> str:
  """Mean ± std minutes to the target, and how many seeds reached it when not all did."""
  if not row["reached"]:
    return "not reached" if row["n"] and not row["final_fit"] else "–"
  cell = _fmt(row["minutes_to_target"], 1, row["reached"])
  return cell if row["reached"] == row["n"] else f"{cell} ({row['reached']} of {row['n']})"


def results_markdown(results: list[dict[str, Any]]) -> str:
  """results.md: one row per config, mean ± sample std over its seeds."""
  lines = ["# Sweep results", "",
           "Mean ± sample standard deviation over seeds (seed = the config's seed + i); one row "
           "per run in results.csv.", "",
           "| config | seeds | best val accuracy | last val accuracy | val errors paired "
           "with the first config | test accuracy | epochs to best | wall time (s) "
           "| minutes to target | images/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  rows = summarize(results)
  paired = paired_with_first(results)
  for row in rows:
    n = row["n"]
    seeds = f"{n} (+{row['diverged']} diverged)" if row["diverged"] else str(n)
    lines.append(f"| {row['config']} | {seeds} | {_fmt(row['best_val_accuracy'], 4, n)} | "
                 f"{_fmt(row['last_val_accuracy'], 4, n)} | "
                 f"{_paired_cell(row['config'], rows[0]['config'], paired)} | "
                 f"{_fmt(row['test_accuracy'], 4, n)} | {_fmt(row['best_epoch'], 1, n)} | "
                 f"{_fmt(row['wall_s'], 0, n)} | {_target_cell(row)} | "
                 f"{_fmt(row['images_per_s'], 0, n)} |")
  lines += ["", "Best val accuracy: the highest of the run's epochs (its kept checkpoint's), "
            "which favours a noisier run; last val accuracy: its last epoch's, which no "
            "choice inflates.", "",
            "Val errors paired with the first config: the validation images only the first "
            "config's best checkpoint misses / only this config's, summed over the seeds where "
            "both validated on the same images, and the two-sided exact sign test of the two "
            "counts (p: the chance of a split at least that uneven were both equally "
            "accurate).", "",
            "Minutes to target: wall-clock minutes from the start of training until the "
            "validation accuracy first reached the config's train.target_accuracy (default "
            "0.995), over the seeds that reached it."]
  if any(r.get("final_fit") for r in results):
    lines += ["", "A final fit (train.final_fit) trains on its validation images too and keeps "
              "its last epoch, so its validation accuracies and minutes to target are left out."]
  if any(r["resumed"] for r in results):
    lines += ["", "Some runs were resumed after an interruption; their wall time is that of the "
              "session that finished them."]
  return "\n".join(lines) + "\n"


def results_csv(results: list[dict[str, Any]]) -> str:
  """results.csv: one row per run; empty cells for missing values."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  for r in results:
    writer.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
  return buffer.getvalue()


def results_figsize(n_configs: int) -> tuple[float, float]:
  """Inches of results.png: a fixed width and a row per config."""
  return 8.0, 1.5 + 0.4 * max(n_configs, 1)


def plot_results(results: list[dict[str, Any]]) -> Figure:
  """Bars of mean ± std test accuracy per config (validation accuracy without test answers)."""
  ok = [r for r in results if r["status"] == "ok"]
  key = "test_accuracy" if ok and all(r["test_accuracy"] is not None for r in ok) \
      else "best_val_accuracy"
  # A final fit has no validation accuracy: without test answers it has no bar.
  rows = [r for r in summarize(results) if r["n"] and r[key] is not None]
  fig = Figure(figsize=results_figsize(len(rows)), dpi=report.DPI, layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  if not rows:
    ax.set_axis_off()
    ax.text(0.5, 0.5, "no held-out accuracy yet", ha="center", va="center")
    return fig
  means = np.array([r[key][0] for r in rows])
  stds = np.array([r[key][1] for r in rows])
  positions = np.arange(len(rows))[::-1]  # First config at the top, as in results.md.
  ax.barh(positions, means, xerr=stds, capsize=4, color="tab:blue")
  ax.set_yticks(positions, [r["config"] for r in rows])
  # Accuracies differ in the third decimal; an axis from 0 would hide every difference.
  low, high = float((means - stds).min()), float((means + stds).max())
  pad = max((high - low) * 0.3, 2e-3)
  left = max(0.0, low - pad)
  ax.set_xlim(left, min(1.0, high + pad))
  ax.ticklabel_format(axis="x", useOffset=False)
  for y, row in zip(positions, rows):
    ax.text(left, y, f" {_fmt(row[key], 4, row['n'])}", va="center", color="white", fontsize=8)
  label = "test accuracy" if key == "test_accuracy" else "best validation accuracy"
  ax.set_xlabel(f"{label} (mean ± std over seeds)")
  ax.grid(axis="x", alpha=0.3)
  return fig


def write_results(workdir: pathlib.Path, results: list[dict[str, Any]]) -> None:
  """Writes results.csv, results.md and results.png atomically."""
  atomic_write_text(workdir / "results.csv", results_csv(results))
  atomic_write_text(workdir / "results.md", results_markdown(results))
  report.save_figure(plot_results(results), workdir / "results.png")
