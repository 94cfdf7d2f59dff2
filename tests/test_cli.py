"""End-to-end tests of the `dr-jax` command line on tiny data.

Commands run in this process through `cli.main` (the `cli_main` fixture), which parses, dispatches
and reports errors exactly as `dr-jax` does; what needs a real process runs in a subprocess
(`run_cli`): `--help`, `run` and `bench` with a profile (slow tier), and predict on a corrupt
checkpoint, whose one-line error relies on the process exiting at once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pandas as pd
import pytest

from conftest import call_main, cli_isolation, record_predictor_calls, write_family_dir
from dr_jax import api, augment, build, cli, config, evaluate, predict, provenance
from dr_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = REPO / "experiments" / "tiny.py"
QUICK = ("--config.data.subset=300", "--config.num_epochs=2")
# The trained fixture's model and step sizes: conftest.tiny_config's, whose compiled programs the
# other modules' tiny runs put in the shared compilation cache.
NARROW = ("--config.model.kwargs.widths=(8, 16)", "--config.model.kwargs.dense=32",
          "--config.train.steps_per_call=3", "--config.train.eval_batch_size=16")
ACCURACY = re.compile(r"accuracy: (0\.\d{5}|1\.00000)")
# Lines JAX, absl or TensorStore may log on their own; they are not the CLI's output.
# Lines that may precede the error: absl/XLA logging, and train's note of the step that failed.
LOG_NOISE = re.compile(r"^(WARNING|[IWEF]\d{4} |loading data from .*…$)")
SENTINEL = "ImageId,Label\n1,7\n"


def error_line(stderr: str) -> str:
  """The single `dr-jax: error:` line of stderr, after checking nothing else was printed."""
  assert "Traceback" not in stderr, stderr
  lines = [line for line in stderr.splitlines() if line.strip() and not LOG_NOISE.match(line)]
  assert len(lines) == 1 and lines[0].startswith("dr-jax: error: "), stderr
  return lines[0]


def assert_user_error(result: tuple[int, str, str], *fragments: str) -> str:
  """Checks exit status 2 and one error line that contains every fragment; returns the line."""
  code, _, stderr = result
  assert code == 2, stderr
  line = error_line(stderr)
  for fragment in fragments:
    assert fragment in line, line
  return line


def snapshot(root: pathlib.Path) -> dict[str, tuple[int, str] | None]:
  """Every path under `root`: (mtime_ns, sha256) for a file, None for a directory."""
  return {str(p.relative_to(root)):
          (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
          if p.is_file() else None
          for p in root.rglob("*")}


def set_cell(lines: list[str], row: int, column: int, value: str) -> str:
  """CSV text of `lines` with one cell of data row `row` (0-based, after the header) replaced."""
  lines = list(lines)
  cells = lines[row + 1].rstrip("\n").split(",")
  cells[column] = value
  lines[row + 1] = ",".join(cells) + "\n"
  return "".join(lines)


def last_json(stdout: str) -> dict:
  """The JSON object on the last line of stdout."""
  return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def data(kaggle_dir) -> pathlib.Path:
  """One tiny data dir shared by the module (only its .cache/ changes)."""
  return kaggle_dir()


@pytest.fixture(scope="module")
def trained(cli_env, data, tmp_path_factory) -> tuple[pathlib.Path, str]:
  """A workdir trained once (in-process) with experiments/tiny.py, and the train command's
  stdout."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  with cli_isolation(cli_env):
    code, out, err = call_main(("train", "--config", TINY, "--workdir", workdir, "--data-dir",
                                data, *QUICK, *NARROW))
  assert code == 0, err
  return workdir, out


@pytest.fixture(scope="module")
def predicted(cli_env, trained, data) -> tuple[pathlib.Path, str]:
  """The trained workdir's default submission.csv, and the predict command's stdout."""
  workdir, _ = trained
  with cli_isolation(cli_env):
    code, out, err = call_main(("predict", "--workdir", workdir, "--data-dir", data))
  assert code == 0, err
  return workdir / "submission.csv", out


@pytest.fixture(scope="module")
def guarded(trained, tmp_path_factory) -> pathlib.Path:
  """A copy of the trained workdir for commands that must fail without touching it."""
  copy = tmp_path_factory.mktemp("guarded") / "run"
  shutil.copytree(trained[0], copy)
  return copy


@pytest.fixture
def workdir_copy(trained, tmp_path) -> pathlib.Path:
  """A private copy of the trained workdir that a test may modify."""
  return shutil.copytree(trained[0], tmp_path / "run")


# Happy paths.


def test_help_lists_every_command(run_cli):
  code, out, err = run_cli("--help")
  assert code == 0, err
  for command in ("fetch", "train", "predict", "validate", "score", "submit", "config", "summary",
                  "run", "bench", "sweep", "report"):
    assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), out


def test_train_writes_run_files_and_prints_summary(trained):
  workdir, out = trained
  summary = last_json(out)
  assert 0.0 <= summary["best_val_accuracy"] <= 1.0
  assert summary["best_epoch"] in (1, 2)
  for name in ("config.json", "provenance.json"):
    assert json.loads((workdir / name).read_text())
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "checkpoints" / "best" / str(summary["best_epoch"])).is_dir()
  assert (workdir / "checkpoints" / "latest" / "2").is_dir()


def test_predict_writes_one_row_per_test_image(predicted, data):
  path, out = predicted
  assert out.strip().splitlines()[-1] == str(path)
  header, *rows = path.read_text().splitlines()
  assert header == "ImageId,Label"
  n_test = len((data / "test.csv").read_text().splitlines()) - 1
  ids, labels = zip(*(map(int, row.split(",")) for row in rows))
  assert list(ids) == list(range(1, n_test + 1))
  assert set(labels) <= set(range(10))


def test_predict_blends_several_runs_into_out(cli_main, trained, predicted, data, tmp_path):
  out = tmp_path / "blend.csv"
  assert_user_error(cli_main("predict", "--workdir", trained[0], "--workdir", trained[0],
                            "--data-dir", data), "--out")
  code, stdout, err = cli_main("predict", "--workdir", trained[0], "--workdir", trained[0],
                              "--data-dir", data, "--out", out)
  assert code == 0, err
  assert stdout.strip() == str(out) and "blend of 2 runs, 2 members" in err
  assert out.read_text() == predicted[0].read_text()  # A run blended with itself is itself.


def test_score_with_default_and_explicit_answers(cli_main, predicted, data):
  path, _ = predicted
  for extra in ((), ("--answers", data / "test_answers.csv")):
    code, out, err = cli_main("score", path, "--data-dir", data, *extra)
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert ACCURACY.fullmatch(last), out
    # Each class is a bright block at its own place: even two epochs learn it.
    assert float(last.split()[-1]) > 0.5


def test_score_of_two_submissions_prints_both_and_pairs_them(cli_main, predicted, data, tmp_path):
  path, _ = predicted
  flipped = tmp_path / "flipped.csv"  # The first row's label changed: one image more or less.
  rows = path.read_text().splitlines()
  image_id, label = rows[1].split(",")
  flipped.write_text("\n".join([rows[0], f"{image_id},{(int(label) + 1) % 10}", *rows[2:]]) + "\n")
  code, out, err = cli_main("score", path, flipped, "--data-dir", data)
  assert code == 0, err
  lines = out.strip().splitlines()
  assert lines[0] == "| submission | accuracy | wrong |" and len(lines) == 8, out
  first_wrong, flipped_wrong = (int(line.split(" | ")[-1].rstrip(" |")) for line in lines[2:4])
  assert abs(first_wrong - flipped_wrong) == 1
  only = (0, 1) if flipped_wrong > first_wrong else (1, 0)
  assert lines[7] == (f"| {flipped} | {only[0]} | {only[1]} | {min(first_wrong, flipped_wrong)} "
                      "| 1.000 |")
  line = assert_user_error(cli_main("score", path, tmp_path / "none.csv", "--data-dir", data))
  assert str(tmp_path / "none.csv") in line and "not found" in line


def test_score_by_source_prints_a_row_per_submission(cli_main, predicted, data, monkeypatch):
  from dr_jax import fetch

  path, _ = predicted
  answers = pd.read_csv(data / "test_answers.csv")["Label"].to_numpy()
  from_test = np.arange(len(answers)) % 3 == 0
  monkeypatch.setattr(fetch, "embedded_test_sources", lambda: (answers, from_test))
  code, out, err = cli_main("score", "--by-source", path, path, "--data-dir", data)
  assert code == 0, err
  head, _, first, second = out.strip().splitlines()
  assert head == (f"| submission | all ({len(answers)}) | MNIST's test set ({from_test.sum()}) | "
                  f"MNIST's training set ({(~from_test).sum()}) |")
  assert first == second and first.startswith(f"| {path} | ")
  monkeypatch.setattr(fetch, "embedded_test_sources", lambda: (answers + 1, from_test))
  line = assert_user_error(cli_main("score", "--by-source", path, "--data-dir", data))
  assert "not the embedded data's answers" in line


def test_predict_writes_the_sample_submissions_header_and_ids(cli_main, trained, predicted,
                                                               data, tmp_path):
  """A sample_submission.csv beside test.csv gives the header and, test.csv having no id
  column, the ids in its order: here `id,label` counting down from n - 1."""
  with_sample = tmp_path / "data"
  with_sample.mkdir()
  for name in ("train.csv", "test.csv"):
    shutil.copy(data / name, with_sample / name)
  n_test = len((data / "test.csv").read_text().splitlines()) - 1
  ids = list(range(n_test - 1, -1, -1))
  (with_sample / "sample_submission.csv").write_text(
      "id,label\n" + "".join(f"{i},0\n" for i in ids))
  out = tmp_path / "submission.csv"
  code, _, err = cli_main("predict", "--workdir", trained[0], "--data-dir", with_sample,
                          "--out", out)
  assert code == 0, err
  header, *rows = out.read_text().splitlines()
  assert header == "id,label"
  assert [int(row.split(",")[0]) for row in rows] == ids
  # The same labels as the default submission, row for row.
  np.testing.assert_array_equal([int(row.split(",")[1]) for row in rows],
                                submission_labels(predicted[0]))


def test_validate_prints_a_row_per_tta_count(cli_main, trained, data):
  code, out, err = cli_main("validate", "--workdir", trained[0], "--data-dir", data,
                           "--tta", "1", "5")
  assert code == 0, err
  header, rule, *rows, paired_header, _, paired = out.strip().splitlines()
  assert header == "| tta | member 0 | member mean accuracy |"
  assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 5"]
  best = last_json(trained[1])["best_val_accuracy"]
  assert abs(float(rows[0].split(" | ")[2].rstrip(" |")) - best) < 1e-4, (rows, best)
  assert "each test-time transform count against the first" in err
  assert paired_header == ("| run | against | wrong in the first only | wrong in this one only "
                           "| wrong in both | sign test p |")
  cells = paired.strip("| ").split(" | ")
  assert cells[:2] == [str(trained[0]), "tta 5"]
  errors = [int(row.split(" | ")[1]) for row in rows]
  # Wrong with one view = wrong with it only + wrong with both; likewise for five.
  assert int(cells[2]) + int(cells[4]) == errors[0] and int(cells[3]) + int(cells[4]) == errors[1]



def test_validate_reads_a_run_saved_before_final_fit_existed(cli_main, workdir_copy, data):
  """A config.json without train.final_fit is a run that held its validation images out."""
  saved = json.loads((workdir_copy / "config.json").read_text())
  del saved["train"]["final_fit"]
  (workdir_copy / "config.json").write_text(json.dumps(saved, indent=2))
  code, out, err = cli_main("validate", "--workdir", workdir_copy, "--data-dir", data,
                           "--tta", "1")
  assert code == 0, err
  assert out.startswith("| tta | member 0 | member mean accuracy |")


def test_validate_with_two_workdirs_validates_their_blend(cli_main, trained, data):
  code, out, err = cli_main("validate", "--workdir", trained[0], "--workdir", trained[0],
                           "--data-dir", data, "--tta", "1")
  assert code == 0, err
  assert "validation errors of each run's best checkpoint and of their blend" in err
  assert "each run against the first on the same images" in err
  header, _, row, paired_header, _, paired = out.strip().splitlines()
  assert header == (f"| tta | {trained[0]} | {trained[0]} | member mean accuracy | "
                    "blend accuracy |")
  cells = row.strip("| ").split(" | ")
  # A run blended with itself predicts what it predicts alone, and misses the same images.
  assert cells[1] == cells[2] and cells[4] == f"{cells[3]} ({cells[1]} wrong)", row
  assert paired_header == ("| tta | run | wrong in the first only | wrong in this one only | "
                           "wrong in both | sign test p |")
  assert paired == f"| 1 | {trained[0]} | 0 | 0 | {cells[1]} | 1.000 |"

def test_summary_prints_parameter_count(cli_main):
  code, out, err = cli_main("summary", "--config", TINY)
  assert code == 0, err
  assert "887,530" in out
  assert out.startswith("input 28×28×1 images; 10 classes\n")


def test_summary_sizes_the_model_for_the_data_or_the_config(cli_main, tmp_path):
  data = write_family_dir(tmp_path / "data", shape=(32, 32, 1),
                          classes=tuple(c for c in range(25) if c != 9), n_train=240, n_test=4)
  code, out, err = cli_main("summary", "--config", TINY, "--data-dir", data)
  assert code == 0, err
  assert out.startswith("input 32×32×1 images; 24 classes\n") and "float32[1,24]" in out
  code, out, err = cli_main("summary", "--config", TINY, "--config.data.image_shape=(16, 16, 3)",
                            "--config.data.num_classes=5")
  assert code == 0, err
  assert out.startswith("input 16×16×3 images; 5 classes\n") and "float32[1,5]" in out


@pytest.mark.slow
def test_run_does_the_whole_pipeline_on_windows_saved_csvs(run_cli, kaggle_dir, tmp_path):
  data = kaggle_dir()
  for name in ("train.csv", "test.csv"):  # As a Windows editor saves them: CRLF and a UTF-8 BOM.
    text = (data / name).read_text()
    (data / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
  before = snapshot(data)
  code, out, err = run_cli("run", "--data-dir", data, "--workdir", tmp_path / "run", "--config",
                           TINY, "--config.data.subset=300")
  assert code == 0, err
  lines = out.strip().splitlines()
  for prefix in ("submission:", "checkpoint:", "tensorboard:"):
    assert any(line.startswith(prefix) for line in lines), out
  assert ACCURACY.fullmatch(lines[-1]), out
  assert float(lines[-1].split()[-1]) > 0.5
  assert (tmp_path / "run" / "submission.csv").is_file()
  assert {k: v for k, v in snapshot(data).items() if not k.startswith(".cache")} == before


def test_fetch_reuses_existing_files(cli_main, kaggle_dir):
  data = kaggle_dir()
  before = snapshot(data)
  code, out, err = cli_main("fetch", "--data-dir", data)
  assert code == 0, err
  assert out.startswith("existing:")
  assert snapshot(data) == before


def test_fetch_from_kaggle_without_credentials(cli_main, tmp_path):
  assert_user_error(cli_main("fetch", "--data-dir", tmp_path / "d", "--source", "kaggle"),
                    "kaggle.json")
  assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_bench_prints_json_figures_and_a_profile(run_cli, tmp_path):
  code, out, err = run_cli("bench", "--config", TINY, "--steps", "2", "--repeats", "1",
                           "--predict-images", "200", "--trace", tmp_path / "trace")
  assert code == 0, err
  figures = last_json(out)
  for key in ("train_images_per_s", "predict_images_per_s", "train_gflops_per_s",
              "matmul_gflops_per_s", "roofline_fraction"):
    assert isinstance(figures[key], float) and figures[key] > 0, figures
  ops = figures["trace_ms_per_step"]
  assert ops and all(ms > 0 for ms in ops.values()) and any("fusion" in op for op in ops), ops
  assert list((tmp_path / "trace").glob("plugins/profile/*/*.trace.json.gz"))
  table = out.split("dispatch:\n", 1)[1].splitlines()[:len(ops)]
  assert [line.split()[1] for line in table] == list(ops)


@pytest.mark.slow
def test_bench_isa_limits_xla_and_says_so(run_cli):
  code, out, err = run_cli("bench", "--config", TINY, "--steps", "1", "--repeats", "1",
                           "--predict-images", "50", "--isa", "avx2")
  assert code == 0, err
  from dr_jax import xla

  isa = last_json(out)["isa"]
  assert isa == "AVX2" if xla.cpu_isa() == "AVX2" else \
      isa == f"AVX2 (limited by XLA_FLAGS; the CPU has {xla.cpu_isa()})"


# Bad training data: exit 2, one line naming the problem, the existing run untouched.


def _missing(lines):
  return None


def _gzip_bytes(lines):
  return gzip.compress("".join(lines).encode())


@pytest.mark.parametrize("make_train, fragments", [
    pytest.param(_missing, ["train.csv", "not found"], id="missing"),
    pytest.param(lambda lines: "", ["train.csv", "empty"], id="empty"),
    pytest.param(lambda lines: lines[0], ["train.csv", "no rows"], id="header-only"),
    pytest.param(lambda lines: lines[0].replace("pixel5,", "pixelX,") + "".join(lines[1:]),
                 ["train.csv", "pixel5", "pixelX"], id="wrong-header"),
    pytest.param(lambda lines: "".join(lines[:7] + [lines[7].rsplit(",", 1)[0] + "\n"]
                                       + lines[8:]),
                 ["train.csv", "line 8", "784 fields", "785"], id="short-row"),
    pytest.param(lambda lines: set_cell(lines, 4, 11, "abc"),
                 ["train.csv", "line 6", "pixel10", "'abc'"], id="non-numeric"),
    pytest.param(lambda lines: set_cell(lines, 8, 101, ""),
                 ["train.csv", "pixel100", "line 10"], id="empty-cell"),
    pytest.param(lambda lines: set_cell(lines, 2, 20, "1.5"),
                 ["train.csv", "line 4", "pixel19", "holds 1.5,"], id="fraction"),
    pytest.param(lambda lines: set_cell(lines, 3, 51, "300"),
                 ["train.csv", "line 5", "pixel50", "300"], id="pixel-300"),
    pytest.param(lambda lines: set_cell(lines, 5, 0, "-12"),
                 ["train.csv", "line 7", "label", "-12"], id="label-negative"),
    pytest.param(lambda lines: set_cell(lines, 5, 0, "12"),
                 ["train.csv", "label(s) 12 have only one image"], id="label-12-alone"),
    pytest.param(_gzip_bytes, ["train.csv", "cannot be read"], id="gzip-named-csv"),
])
def test_train_rejects_bad_data(cli_main, data, guarded, tmp_path, make_train, fragments):
  content = make_train((data / "train.csv").read_text().splitlines(keepends=True))
  if isinstance(content, str):
    (tmp_path / "train.csv").write_text(content)
  elif content is not None:
    (tmp_path / "train.csv").write_bytes(content)
  before = snapshot(guarded)
  assert_user_error(cli_main("train", "--config", TINY, "--workdir", guarded, "--data-dir",
                            tmp_path, *QUICK), *fragments)
  assert snapshot(guarded) == before


# Bad configs and arguments.


def test_unknown_config_key_suggests_the_closest(cli_main, data, guarded):
  before = snapshot(guarded)
  assert_user_error(cli_main("train", "--config", TINY, "--workdir", guarded, "--data-dir", data,
                            "--config.optimizer.lrr=1"), "optimizer.lrr", "optimizer.lr?")
  assert snapshot(guarded) == before


def test_a_pseudo_label_teacher_that_was_never_trained(cli_main, data, guarded, tmp_path):
  before = snapshot(guarded)
  assert_user_error(cli_main("train", "--config", TINY, "--workdir", guarded, "--data-dir", data,
                            f"--config.pseudo.teacher={tmp_path / 'none'}"),
                    "pseudo.teacher=", "not a dr_jax run directory", "train first")
  assert snapshot(guarded) == before


def test_a_budget_that_fits_no_epoch(cli_main, data, tmp_path):
  workdir = tmp_path / "run"
  code, _, err = cli_main("train", "--config", TINY, "--workdir", workdir, "--data-dir", data,
                          *QUICK, *NARROW, "--budget", "0.001")
  # Known only once compiled: the progress lines come first, the error is the last line.
  assert code == 2 and "Traceback" not in err
  assert re.fullmatch(r"dr-jax: error: train\.budget_minutes=0\.001 fits no epoch on this machine: "
                      r"\d+\.\d\d min to load and compile, then \d+\.\d\d min per epoch; raise "
                      r"--budget", err.strip().splitlines()[-1])
  assert not (workdir / "config.json").exists() and not (workdir / "metrics.jsonl").exists()
  assert_user_error(cli_main("run", "--config", TINY, "--workdir", workdir, "--data-dir", data,
                            "--budget", "-1"), "train.budget_minutes")


def test_wrong_typed_override(cli_main, data, guarded):
  assert_user_error(cli_main("train", "--config", TINY, "--workdir", guarded, "--data-dir", data,
                            "--config.num_epochs=abc"), "num_epochs=abc", "int")


def test_config_file_not_found(cli_main, data, tmp_path):
  assert_user_error(cli_main("train", "--config", tmp_path / "nope.py", "--workdir",
                            tmp_path / "run", "--data-dir", data), "nope.py", "not found")


def test_config_file_that_raises(cli_main, data, tmp_path):
  config = tmp_path / "broken.py"
  config.write_text("def get_config():\n  raise ValueError('no such experiment')\n")
  assert_user_error(cli_main("train", "--config", config, "--workdir", tmp_path / "run",
                            "--data-dir", data),
                    "broken.py", "ValueError", "no such experiment", "broken.py:2")


def test_override_on_a_command_without_config(cli_main, predicted, data):
  assert_user_error(cli_main("score", predicted[0], "--data-dir", data, "--config.seed=1"),
                    "--config.seed=1", "score")


# predict without a usable checkpoint: exit 2, and an existing submission stays as it was.


@pytest.mark.parametrize("with_config", [False, True], ids=["empty-dir", "config-only"])
def test_predict_without_checkpoint(cli_main, trained, data, tmp_path, with_config):
  workdir = tmp_path / "run"
  workdir.mkdir()
  if with_config:
    shutil.copy(trained[0] / "config.json", workdir)
  out = tmp_path / "submission.csv"
  out.write_text(SENTINEL)
  before = snapshot(tmp_path)
  assert_user_error(cli_main("predict", "--workdir", workdir, "--data-dir", data, "--out", out),
                    "checkpoint" if with_config else "config.json", str(workdir))
  assert snapshot(tmp_path) == before


def test_predict_rejects_test_file_with_labels(cli_main, trained, data, tmp_path):
  shutil.copy(data / "train.csv", tmp_path / "test.csv")
  out = tmp_path / "submission.csv"
  assert_user_error(cli_main("predict", "--workdir", trained[0], "--data-dir", tmp_path, "--out",
                            out), "test.csv", "label")
  assert not out.exists()


def test_validate_and_predict_reject_a_bad_tta(cli_main, trained, data):
  for command in ("validate", "predict"):
    assert_user_error(cli_main(command, "--workdir", trained[0], "--data-dir", data, "--tta", "0"),
                      "--tta 0")


def test_validate_of_a_blend_asks_each_member_for_each_view_and_counts_images(trained, data,
                                                                            monkeypatch):
  """On a tiny run the error counts of 1 and 3 views may tie: the views asked for are checked."""
  views = record_predictor_calls(monkeypatch, "tta")
  result = predict.validate_blend([trained[0], trained[0]], data, (1, 3))
  assert views == [1, 3, 1, 3]
  assert result.member_errors.dtype == np.int64 and result.ensemble_errors.dtype == np.int64


def test_validate_of_a_blend_rejects_a_bad_tta_word_for_word(cli_main, trained, data):
  line = assert_user_error(cli_main("validate", "--workdir", trained[0], "--workdir", trained[0],
                                    "--data-dir", data, "--tta", "1", "0"))
  assert line == "dr-jax: error: --tta 0: choose 1 (no test-time augmentation) to 9"


def test_validate_blends_a_one_member_run_with_its_own_split(cli_main, trained, workdir_copy,
                                                             data):
  """ensemble.own_split gives member m the split of seed + m: one member's is the shared one."""
  edit_run_config(workdir_copy, ensemble={"own_split": True})
  code, out, err = cli_main("validate", "--workdir", trained[0], "--workdir", workdir_copy,
                           "--data-dir", data, "--tta", "1")
  assert code == 0, err
  header, _, row, _, _, paired = out.strip().splitlines()
  assert header == (f"| tta | {trained[0]} | {workdir_copy} | member mean accuracy | "
                    "blend accuracy |")
  cells = row.strip("| ").split(" | ")
  assert cells[1] == cells[2], row  # The same checkpoint on the same images.
  assert paired == f"| 1 | {workdir_copy} | 0 | 0 | {cells[1]} | 1.000 |"


def test_validate_and_report_reject_another_train_csv(cli_main, trained, kaggle_dir):
  other = kaggle_dir(n_train=300, n_test=20, seed=1)
  for args in (("validate", "--workdir", trained[0]), ("report", trained[0])):
    assert_user_error(cli_main(*args, "--data-dir", other), str(other / "train.csv"),
                      "holds other digits", "--data-dir")


def _garble(files: list[pathlib.Path]) -> None:
  assert files, "orbax's checkpoint layout changed; pick other files to damage"
  for path in files:
    path.write_bytes(b"garbage")


def test_predict_on_corrupt_checkpoint_array_data(run_cli, workdir_copy, data):
  best = next((workdir_copy / "checkpoints" / "best").iterdir())
  _garble(list((best / "state").glob("ocdbt.process_*/d/*")))
  (workdir_copy / "submission.csv").write_text(SENTINEL)
  before = snapshot(workdir_copy)
  assert_user_error(run_cli("predict", "--workdir", workdir_copy, "--data-dir", data),
                    str(best), "cannot be read")
  assert snapshot(workdir_copy) == before


@pytest.mark.slow
def test_predict_on_corrupt_checkpoint_index(run_cli, workdir_copy, data):
  best = next((workdir_copy / "checkpoints" / "best").iterdir())
  _garble(list((best / "state" / "d").iterdir()))
  # The tracebacks are intermittent (about 3 runs in 4); five clean runs mean it is fixed.
  for _ in range(5):
    assert_user_error(run_cli("predict", "--workdir", workdir_copy, "--data-dir", data),
                      str(best), "cannot be read")


# score with a malformed submission.


@pytest.mark.parametrize("edit, fragments", [
    pytest.param(lambda lines: lines[:4] + lines[5:], ["missing", "first 4"], id="missing-id"),
    pytest.param(lambda lines: lines + ["101,3"], ["unknown", "first 101"], id="extra-id"),
    pytest.param(lambda lines: lines + ["7,3"], ["ImageId 7", "more than once"], id="duplicate"),
    pytest.param(lambda lines: ["Id,Label"] + lines[1:], ["Id,Label", "ImageId,Label"],
                 id="wrong-header"),
    pytest.param(lambda lines: [",".join(f"pixel{i}" for i in range(784))] + lines[1:],
                 ["header is pixel0,pixel1,pixel2,… (784 columns); expected the 2 columns "
                  "an id and a label, e.g. ImageId,Label"], id="test-csv-header"),
])
def test_score_rejects_bad_submission(cli_main, predicted, data, tmp_path, edit, fragments):
  bad = tmp_path / "bad.csv"
  bad.write_text("\n".join(edit(predicted[0].read_text().splitlines())) + "\n")
  assert_user_error(cli_main("score", bad, "--data-dir", data), str(bad), *fragments)


# What predict computes, redone by hand from the members' logits.

# One TTA view of every image, as predict makes it (evaluate._warp_all).
_warp_view = jax.jit(jax.vmap(augment.warp, in_axes=(0, None)))
# experiments/default.py at tiny sizes (the strided CNN, narrowed).
DEFAULT_TINY = ("--config.num_epochs=1", "--config.data.subset=300", "--config.batch_size=32",
                "--config.model.kwargs.widths=(8, 16, 32)", "--config.train.eval_batch_size=16")


def submission_labels(path: pathlib.Path) -> np.ndarray:
  """A submission's labels, after checking its header and its ImageIds 1..n in order."""
  header, *rows = path.read_text().splitlines()
  assert header == "ImageId,Label"
  ids, labels = zip(*(map(int, row.split(",")) for row in rows))
  assert list(ids) == list(range(1, len(rows) + 1))
  return np.array(labels)


def csv_test_images(workdir: pathlib.Path, data_dir: pathlib.Path) -> np.ndarray:
  """test.csv's images as the run reads them."""
  return build.load_test(provenance.read_config(workdir), data_dir).images


def mean_softmax_labels(logits: list[np.ndarray]) -> np.ndarray:
  """The top class of the softmax summed over views (each `(members, n, 10)`) and members."""
  total = np.zeros(logits[0].shape[1:])
  for view in logits:  # Summed as predict sums them: members in float32, views in float64.
    total += np.asarray(jax.nn.softmax(view)).sum(axis=0)
  return total.argmax(-1)


def vote_labels(logits: list[np.ndarray]) -> np.ndarray:
  """The class with the most votes, one per view and member for its top class (ties: lowest)."""
  return sum(np.eye(10)[view.argmax(-1)].sum(axis=0) for view in logits).argmax(-1)


@pytest.fixture(scope="module")
def view_logits(trained, data) -> tuple[np.ndarray, list[np.ndarray]]:
  """The trained run's logits `(1, n, 10)` on the plain test images and on each TTA view."""
  predictor = evaluate.load_predictor(trained[0])
  images = csv_test_images(trained[0], data)
  views = [_warp_view(images.astype(np.float32), m) for m in augment.tta_matrices(9)]
  return (predictor.member_logits(images),
          [predictor.member_logits(np.asarray(view)) for view in views])


def logits_for(view_logits, tta: int) -> list[np.ndarray]:
  """The logits predict averages for `tta` views: the plain images for 1."""
  plain, views = view_logits
  return [plain] if tta == 1 else views[:tta]


def write_config(path: pathlib.Path, overrides: list[str]) -> pathlib.Path:
  """A config file: experiments/tiny.py with `overrides` (KEY=VALUE) applied."""
  path.write_text(f'"""experiments/tiny.py with {", ".join(overrides)}."""\n\n'
                  "from dr_jax.config import apply_overrides, load_config\n\n\n"
                  f"def get_config():\n  return apply_overrides(load_config({str(TINY)!r}), "
                  f"{overrides!r})\n")
  return path


def edit_run_config(workdir: pathlib.Path, **sections: dict) -> None:
  """Changes keys of a run's config.json: `edit_run_config(w, data={"nan_policy": "drop"})`."""
  saved = json.loads((workdir / "config.json").read_text())
  for section, values in sections.items():
    saved[section].update(values)
  (workdir / "config.json").write_text(json.dumps(saved, indent=2))


# predict --tta and --vote.


@pytest.mark.parametrize("tta", range(1, 10))
def test_predict_tta_averages_the_softmax_of_the_first_n_views(cli_main, trained, data,
                                                               view_logits, tmp_path, tta):
  out = tmp_path / "submission.csv"
  code, stdout, err = cli_main("predict", "--workdir", trained[0], "--data-dir", data, "--out",
                               out, "--tta", str(tta))
  assert code == 0, err
  assert stdout.strip() == str(out) and f", tta {tta})" in err
  np.testing.assert_array_equal(submission_labels(out),
                                mean_softmax_labels(logits_for(view_logits, tta)))


def test_predict_tta_above_nine(cli_main, trained, data):
  line = assert_user_error(cli_main("predict", "--workdir", trained[0], "--data-dir", data,
                                    "--tta", "10"))
  assert line == "dr-jax: error: --tta 10: choose 1 (no test-time augmentation) to 9"


def test_predict_vote_takes_the_views_majority(cli_main, trained, data, view_logits, tmp_path,
                                               monkeypatch):
  """One member, three views: each view votes for its top class."""
  vote, mean = tmp_path / "vote.csv", tmp_path / "mean.csv"
  votes = record_predictor_calls(monkeypatch, "vote")
  for out, extra in ((vote, ("--vote",)), (mean, ())):
    code, stdout, err = cli_main("predict", "--workdir", trained[0], "--data-dir", data,
                                 "--out", out, "--tta", "3", *extra)
    assert code == 0, err
    assert stdout.strip() == str(out)
  # On this run every image's views may agree, so voting and averaging may give the same
  # labels: --vote must reach the predictor whatever they give.
  assert votes == [True, False]
  logits = logits_for(view_logits, 3)
  voted = submission_labels(vote)
  np.testing.assert_array_equal(voted, vote_labels(logits))
  # Where every view has the same top class, voting and averaging agree.
  top = np.stack([view[0].argmax(-1) for view in logits])
  differ = voted != submission_labels(mean)
  assert not (differ & (top == top[0]).all(axis=0)).any()


@pytest.mark.slow
def test_predict_vote_of_an_ensemble_is_its_members_majority(cli_main, data, tmp_path):
  workdir = tmp_path / "run"
  code, _, err = cli_main("train", "--config", TINY, "--workdir", workdir, "--data-dir", data,
                          *QUICK, *NARROW, "--config.num_epochs=1", "--config.ensemble.size=3")
  assert code == 0, err
  vote, mean = tmp_path / "vote.csv", tmp_path / "mean.csv"
  for out, extra in ((vote, ("--vote",)), (mean, ())):
    code, _, err = cli_main("predict", "--workdir", workdir, "--data-dir", data, "--out", out,
                            *extra)
    assert code == 0, err
    assert "3 member(s)" in err
  logits = evaluate.load_predictor(workdir).member_logits(csv_test_images(workdir, data))
  voted = submission_labels(vote)
  np.testing.assert_array_equal(voted, vote_labels([logits]))
  np.testing.assert_array_equal(submission_labels(mean), mean_softmax_labels([logits]))
  top = logits.argmax(-1)
  differ = voted != submission_labels(mean)
  assert not (differ & (top == top[0]).all(axis=0)).any()


def _count_views(monkeypatch) -> list[int]:
  """Records the view count of every `augment.tta_matrices` call predict makes."""
  counts, real = [], augment.tta_matrices
  monkeypatch.setattr(augment, "tta_matrices",
                      lambda count, *a, **k: counts.append(count) or real(count, *a, **k))
  return counts


def _predict_with_the_runs_tta(cli_main, workdir, data, tmp_path, monkeypatch) -> dict:
  """Labels, the tta the message names and the views used, for no --tta, --tta 3 and --tta 1."""
  counts = _count_views(monkeypatch)
  found = {}
  for name, extra in (("default", ()), ("3", ("--tta", "3")), ("1", ("--tta", "1"))):
    out = tmp_path / f"{name}.csv"
    code, _, err = cli_main("predict", "--workdir", workdir, "--data-dir", data, "--out", out,
                            *extra)
    assert code == 0, err
    said = re.search(r", tta (\d)\)", err)
    assert said, err
    found[name] = (submission_labels(out), int(said.group(1)), counts[:])
    counts.clear()
  return found


def test_predict_uses_the_runs_predict_tta_unless_tta_is_given(cli_main, workdir_copy, data,
                                                               view_logits, tmp_path,
                                                               monkeypatch):
  edit_run_config(workdir_copy, predict={"tta": 3})
  found = _predict_with_the_runs_tta(cli_main, workdir_copy, data, tmp_path, monkeypatch)
  assert [found[name][1:] for name in ("default", "3", "1")] == [(3, [3]), (3, [3]), (1, [1])]
  np.testing.assert_array_equal(found["default"][0], found["3"][0])
  np.testing.assert_array_equal(found["3"][0], mean_softmax_labels(logits_for(view_logits, 3)))
  np.testing.assert_array_equal(found["1"][0], mean_softmax_labels(logits_for(view_logits, 1)))


@pytest.mark.slow
def test_a_run_trained_with_predict_tta_predicts_with_that_many_views(cli_main, data, tmp_path,
                                                                      monkeypatch):
  workdir = tmp_path / "run"
  code, _, err = cli_main("train", "--config", TINY, "--workdir", workdir, "--data-dir", data,
                          *QUICK, *NARROW, "--config.num_epochs=1", "--config.predict.tta=3")
  assert code == 0, err
  assert provenance.read_config(workdir).predict.tta == 3
  found = _predict_with_the_runs_tta(cli_main, workdir, data, tmp_path, monkeypatch)
  assert [found[name][1:] for name in ("default", "3", "1")] == [(3, [3]), (3, [3]), (1, [1])]
  np.testing.assert_array_equal(found["default"][0], found["3"][0])


def assert_blend_refused(cli_main, runs: list[pathlib.Path], data_dir: pathlib.Path,
                         out: pathlib.Path, message: str) -> None:
  """`predict.blend` and `dr-jax predict` with these runs both refuse with `message`, writing
  nothing."""
  with pytest.raises(UserError) as info:
    predict.blend(runs, data_dir, out)
  assert str(info.value) == message
  workdirs = [arg for run in runs for arg in ("--workdir", run)]
  line = assert_user_error(cli_main("predict", *workdirs, "--data-dir", data_dir, "--out", out))
  assert line == f"dr-jax: error: {message}"
  assert not out.exists()


def test_blend_refuses_runs_that_keep_other_test_rows(cli_main, trained, data, tmp_path):
  """An empty cell in test.csv: nan_policy=fill keeps its row, drop does not."""
  with_nan = tmp_path / "data"
  with_nan.mkdir()
  lines = (data / "test.csv").read_text().splitlines(keepends=True)
  (with_nan / "test.csv").write_text(set_cell(lines, 4, 100, ""))
  fill, drop = tmp_path / "fill", tmp_path / "drop"
  for workdir, policy in ((fill, "fill"), (drop, "drop")):
    shutil.copytree(trained[0], workdir)
    edit_run_config(workdir, data={"nan_policy": policy})
  n_test = len(lines) - 1
  message = (f"{drop}: its data settings keep {n_test - 1} test images, the runs before it "
             f"{n_test}; blend runs with the same data.nan_policy")
  assert_blend_refused(cli_main, [fill, drop], with_nan, tmp_path / "blend.csv", message)


def test_blend_refuses_runs_trained_on_other_labels(cli_main, trained, data, tmp_path):
  """The same checkpoint claiming the labels 0..8 and 10: ten outputs either way, so only the
  labels tell them apart."""
  digits, other = tmp_path / "digits", tmp_path / "other"
  for workdir in (digits, other):
    shutil.copytree(trained[0], workdir)
  edit_run_config(other, data={"classes": [*range(9), 10]})
  message = (f"{other}: predicts the labels (0, 1, 2, 3, 4, 5, 6, 7, 8, 10), the runs before it "
             "(0, 1, 2, 3, 4, 5, 6, 7, 8, 9); blend runs trained on the same labels")
  assert_blend_refused(cli_main, [digits, other], data, tmp_path / "blend.csv", message)


def test_predict_refuses_a_checkpoint_of_another_model(cli_main, workdir_copy, data):
  """A classic CNN's checkpoint under a config that names the strided CNN."""
  edit_run_config(workdir_copy, model={"name": "strided", "kwargs": {
      "widths": [8, 16, 32], "dropout": 0.4, "space_to_depth": True}})
  best = next((workdir_copy / "checkpoints" / "best").iterdir())
  submission = workdir_copy / "submission.csv"
  before = submission.read_bytes() if submission.exists() else None
  line = assert_user_error(cli_main("predict", "--workdir", workdir_copy, "--data-dir", data))
  assert line.startswith(f"dr-jax: error: {best}: checkpoint cannot be read (")
  assert line.endswith("); it is damaged or from another model: delete it, or retrain")
  assert (submission.read_bytes() if submission.exists() else None) == before


# score on files that are not submissions.


def _answers_with(data: pathlib.Path, row: int, column: int, value: str) -> str:
  """The test answers (a perfect submission) with one cell replaced."""
  return set_cell((data / "test_answers.csv").read_text().splitlines(keepends=True), row,
                  column, value)


@pytest.mark.parametrize("row, column, value, message", [
    pytest.param(3, 1, "seven", "line 5: Label must be an integer, got 'seven'", id="word"),
    pytest.param(6, 0, "x7", "line 8: ImageId must be an integer, got 'x7'", id="image-id"),
])
def test_score_rejects_a_cell_that_is_not_an_integer(cli_main, data, tmp_path, row, column,
                                                     value, message):
  bad = tmp_path / "bad.csv"
  bad.write_text(_answers_with(data, row, column, value))
  line = assert_user_error(cli_main("score", bad, "--data-dir", data))
  assert line == f"dr-jax: error: {bad}: {message}"


@pytest.mark.parametrize("value", ["3.5", ""], ids=["fraction", "empty"])
def test_score_names_a_numeric_non_integer_cell_as_written(cli_main, data, tmp_path, value):
  bad = tmp_path / "bad.csv"
  bad.write_text(_answers_with(data, 3, 1, value))
  line = assert_user_error(cli_main("score", bad, "--data-dir", data))
  assert line.startswith(f"dr-jax: error: {bad}: line 5: Label must be an integer, got ")
  assert "np.float64" not in line, line  # The cell as the file has it, not numpy's repr.


def test_score_names_the_line_of_a_whole_number_written_as_a_fraction(cli_main, data, tmp_path):
  """`4.0` on line 5 alone: either accepted as 4, or reported where it is."""
  bad = tmp_path / "bad.csv"
  bad.write_text(_answers_with(data, 3, 1, "4.0"))
  code, out, err = cli_main("score", bad, "--data-dir", data)
  if code == 0:
    return
  line = assert_user_error((code, out, err))
  assert line.startswith(f"dr-jax: error: {bad}: line 5: Label must be an integer, got "), line
  assert "4.0" in line


def test_score_of_a_header_without_rows(cli_main, data, tmp_path):
  bad = tmp_path / "bad.csv"
  bad.write_text("ImageId,Label\n")
  line = assert_user_error(cli_main("score", bad, "--data-dir", data))
  assert line.startswith(f"dr-jax: error: {bad}: "), line


@pytest.mark.parametrize("content, reason", [
    pytest.param(None, None, id="directory"),
    pytest.param(b"", "No columns to parse from file", id="empty"),
    pytest.param(bytes(range(256)) * 4,
                 "'utf-8' codec can't decode byte 0x80 in position 128: invalid start byte",
                 id="binary"),
])
@pytest.mark.parametrize("role", ["submission", "answers"])
def test_score_rejects_an_unreadable_file(cli_main, predicted, data, tmp_path, content, reason,
                                          role):
  bad = tmp_path / "bad.csv"
  if content is None:
    bad.mkdir()
  else:
    bad.write_bytes(content)
  args = (bad, "--answers", data / "test_answers.csv") if role == "submission" else \
      (predicted[0], "--answers", bad)
  line = assert_user_error(cli_main("score", *args))
  assert line == (f"dr-jax: error: {role} file {bad} not found" if content is None else
                  f"dr-jax: error: {bad}: not a readable CSV ({reason})")


# report and sweep.


def test_report_writes_its_figures_and_prints_the_index(cli_main, workdir_copy, data):
  code, out, err = cli_main("report", workdir_copy, "--data-dir", data)
  assert code == 0, err
  index = workdir_copy / "report" / "index.md"
  assert out.strip().splitlines()[-1] == str(index)
  text = index.read_text()
  assert text.startswith(f"# Report: {workdir_copy}\n")
  for name in ("learning_curves", "confusion_matrix", "worst_errors", "conv1_filters", "digit"):
    assert (index.parent / f"{name}.png").is_file() and f"]({name}.png)" in text, name
  assert list(index.parent.glob("feature_maps_*.png"))


@pytest.fixture(scope="module")
def swept(cli_env, data, tmp_path_factory) -> tuple[pathlib.Path, tuple[int, str, str]]:
  """`dr-jax sweep` of a config whose loss blows up, then experiments/tiny.py; one seed each."""
  root = tmp_path_factory.mktemp("sweep")
  diverging = write_config(root / "diverging.py", ["optimizer.name=sgd", "optimizer.lr=1e6",
                                                   "schedule.name=constant"])
  with cli_isolation(cli_env):
    result = call_main(("sweep", diverging, TINY, "--seeds", "1", "--workdir", root / "sweep",
                        "--data-dir", data, "--config.num_epochs=1", "--config.data.subset=300",
                        *NARROW))
  return root / "sweep", result


def _result_rows(workdir: pathlib.Path) -> list[dict[str, str]]:
  header, *rows = (workdir / "results.csv").read_text().splitlines()
  return [dict(zip(header.split(","), row.split(","))) for row in rows]


@pytest.mark.slow
def test_sweep_prints_its_results_table(swept):
  workdir, (code, out, err) = swept
  assert code == 0, err
  assert out == (workdir / "results.md").read_text()
  assert f"results: {workdir / 'results.csv'}, {workdir / 'results.png'}" in err
  # Best and last validation accuracy, no pairing (the first config diverged), test accuracy,
  # then epochs to best.
  assert re.search(r"^\| tiny \| 1 \|( (0\.\d{4}|1\.0000) \|){2} – \| (0\.\d{4}|1\.0000) \| "
                   r"1\.0 \|", out, re.MULTILINE), out
  tiny = json.loads((workdir / "tiny" / "seed0" / "result.json").read_text())
  assert tiny["status"] == "ok" and tiny["epochs"] == 1
  assert (workdir / "tiny" / "seed0" / "submission.csv").is_file()


@pytest.mark.slow
def test_sweep_records_a_diverged_run_and_goes_on(swept):
  workdir, (code, out, err) = swept
  assert code == 0, err
  rows = _result_rows(workdir)
  assert [(r["config"], r["status"]) for r in rows] == [("diverging", "diverged"),
                                                       ("tiny", "ok")]
  assert rows[0]["best_val_accuracy"] == rows[0]["test_accuracy"] == ""
  diverged = json.loads((workdir / "diverging" / "seed0" / "result.json").read_text())
  assert diverged["error"].startswith("training loss became ")
  assert "| diverging | 0 (+1 diverged) | – | – | (reference) | – |" in out
  assert not (workdir / "diverging" / "seed0" / "submission.csv").exists()


# train, run and bench without --workdir or --config.


def test_train_without_workdir_uses_runs_and_the_config_name(cli_main, trained, data, tmp_path):
  """A finished run copied to ./runs/tiny: `train` without --workdir finds it there."""
  run = shutil.copytree(trained[0], tmp_path / "runs" / "tiny")
  records = (run / "metrics.jsonl").read_text()
  code, out, err = cli_main("train", "--config", TINY, "--data-dir", data, *QUICK, *NARROW,
                            cwd=tmp_path)
  assert code == 0, err
  summary = last_json(out)
  assert summary["workdir"] == str(pathlib.Path("runs") / "tiny") and summary["epochs"] == 2
  assert f"resuming {pathlib.Path('runs') / 'tiny'} after epoch 2" in err
  assert (run / "metrics.jsonl").read_text() == records


@pytest.mark.slow
def test_train_says_what_it_does_and_report_follows_the_runs_data(cli_main, data, tmp_path):
  workdir = tmp_path / "run"
  code, _, err = cli_main("train", "--config", TINY, "--data-dir", data, "--workdir", workdir,
                          *QUICK, *NARROW, "--config.num_epochs=1", cwd=tmp_path)
  assert code == 0, err
  lines = err.splitlines()
  loading = lines.index(f"loading data from {data}…")
  compiling = lines.index("compiling the train step…")
  assert loading < compiling and "train step compiled in" in lines[compiling + 1]
  # No --data-dir, and no data/ in the working directory: report reads the run's own data.
  code, out, err = cli_main("report", workdir, cwd=tmp_path)
  assert code == 0, err
  assert out.strip() == str(workdir / "report" / "index.md")
  assert f"dr-jax: using the data {workdir} was trained on: {data}" in err


def test_train_without_workdir_trains_into_runs_and_the_config_name(cli_main, data, tmp_path):
  code, out, err = cli_main("train", "--config", TINY, "--data-dir", data, *QUICK, *NARROW,
                            "--config.num_epochs=1", cwd=tmp_path)
  assert code == 0, err
  assert last_json(out)["workdir"] == str(pathlib.Path("runs") / "tiny")
  assert (tmp_path / "runs" / "tiny" / "checkpoints" / "best" / "1").is_dir()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_config_names_resolve_to_the_shipped_experiments_from_any_directory(cli_main, tmp_path):
  code, out, err = cli_main("config", "default", cwd=tmp_path)
  assert code == 0, err
  assert code == 0 and "schedule.name=onecycle" in out.splitlines()
  code, out, _ = cli_main("config", "ablations/adam", "--config.num_epochs", "3", cwd=tmp_path)
  assert code == 0 and "optimizer.name=adam" in out.splitlines()
  assert "num_epochs=3" in out.splitlines()


def test_config_prints_keys_that_round_trip_as_overrides(cli_main, tmp_path):
  code, out, _ = cli_main("config", "default", cwd=tmp_path)
  overrides = [f"--config.{line}" for line in out.splitlines()]
  code2, out2, _ = cli_main("config", "strided", *overrides, cwd=tmp_path)
  assert code == code2 == 0
  assert out2 == out  # strided + every printed key = default, value for value.


def test_a_config_file_beats_a_shipped_name(cli_main, tmp_path):
  (tmp_path / "default.py").write_text("from dr_jax.config import get_base_config\n"
                                    "def get_config():\n  c = get_base_config()\n"
                                    "  c.num_epochs = 7\n  return c\n")
  code, out, _ = cli_main("config", "default.py", cwd=tmp_path)
  assert code == 0 and "num_epochs=7" in out.splitlines()


def test_an_unknown_config_name_suggests_the_closest_shipped_one(cli_main, tmp_path):
  line = assert_user_error(cli_main("train", "--config", "defualt", cwd=tmp_path))
  assert line == ("dr-jax: error: config file defualt not found; pass a .py file or the name "
                  "of a shipped config such as default; did you mean default?")
  assert list(tmp_path.iterdir()) == []


def test_version_and_help_state_defaults(cli_main, capsys):
  from dr_jax import __version__

  with pytest.raises(SystemExit) as exit_:
    cli.main(["--version"])
  assert exit_.value.code == 0 and capsys.readouterr().out == f"dr-jax {__version__}\n"
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  text = " ".join(capsys.readouterr().out.split())
  assert "(default: runs/<config name>)" in text
  assert "--config.KEY=VALUE" in text and "(default: None)" not in text
  with pytest.raises(SystemExit):
    cli.main(["bench", "--help"])
  assert "(default: 40)" in " ".join(capsys.readouterr().out.split())


def test_run_says_a_final_fit_has_no_held_out_validation(monkeypatch, capsys, tmp_path):
  """A final fit's best_val_accuracy is on images it trained on: `run` does not print it."""
  result = {"submission": tmp_path / "submission.csv", "checkpoint": tmp_path / "best",
            "best_epoch": 30, "best_val_accuracy": 0.9995, "minutes": 1.0, "accuracy": None}
  for final_fit, says in ((False, "(epoch 30, val accuracy 0.9995)"),
                          (True, "(epoch 30, the last epoch of a final fit, no held-out "
                                 "validation)")):
    monkeypatch.setattr(api, "run", lambda *args, fit=final_fit: result | {"final_fit": fit})
    assert cli.main(["run", "--config", "final_fit", "--workdir", str(tmp_path)]) == 0
    assert f"checkpoint:  {tmp_path / 'best'} {says}\n" in capsys.readouterr().out


@pytest.mark.slow
def test_run_without_config_trains_experiments_default(cli_main, data, tmp_path):
  workdir = tmp_path / "run"
  code, out, err = cli_main("run", "--data-dir", data, "--workdir", workdir, *DEFAULT_TINY)
  assert code == 0, err
  expected = config.apply_overrides(config.load_config(REPO / "experiments" / "default.py"),
                                    [arg.removeprefix("--config.") for arg in DEFAULT_TINY])
  expected.data.classes, expected.data.image_shape = tuple(range(10)), (28, 28, 1)  # The data's.
  assert config.flatten(provenance.read_config(workdir)) == config.flatten(expected)
  # default.py's cap measured this machine and kept the one epoch asked for.
  assert re.search(r"train\.max_minutes=13: 1 epoch of ≈ [\d.]+s .*; num_epochs=1 goes into "
                   r"config\.json", err)
  lines = out.strip().splitlines()
  assert lines[0] == f"submission:  {workdir / 'submission.csv'}"
  assert ACCURACY.fullmatch(lines[-1]), out


@pytest.mark.slow
def test_bench_without_config_times_experiments_default(cli_main):
  code, out, err = cli_main("bench", "--steps", "1", "--repeats", "1", "--predict-images", "16",
                            "--batch", "8", "--config.model.kwargs.widths=(8, 16, 32)")
  assert code == 0, err
  figures = last_json(out)
  assert (figures["model"], figures["batch"], figures["members"]) == ("strided", 8, 1)
  assert figures["train_images_per_s"] > 0 and figures["predict_images_per_s"] > 0


# --config.KEY VALUE, the form with a space.


def test_config_override_with_a_space_equals_the_one_with_equals(cli_main):
  by_space = cli_main("summary", "--config", TINY, "--config.model.kwargs.dense", "64")
  by_equals = cli_main("summary", "--config.model.kwargs.dense=64", "--config", TINY)
  assert by_space[0] == 0, by_space[2]
  assert by_space == by_equals
  # Classic CNN, widths (32, 64): 832 + 25,632 + 18,496 + 36,928 conv, 3,136 x 64 + 64 and
  # 64 x 10 + 10 dense.
  assert "283,306" in by_space[1]


def test_config_override_without_value_at_the_end(cli_main):
  line = assert_user_error(cli_main("summary", "--config", TINY, "--config.model.kwargs.dense"))
  assert line == "dr-jax: error: --config.model.kwargs.dense: expected --config.KEY=VALUE"


# The variants a config can choose, each trained and predicted end to end.


@pytest.mark.slow
@pytest.mark.parametrize("config_file, options", [
    pytest.param(REPO / "experiments" / "strided.py", ("--config.model.kwargs.widths=(8, 16, 32)",),
                 id="strided"),
    pytest.param(TINY, (*NARROW, "--config.model.kwargs.batch_norm=true"), id="batch-norm"),
    pytest.param(TINY, (*NARROW, "--config.model.dtype=bfloat16"), id="bfloat16"),
    pytest.param(TINY, (*NARROW, "--config.optimizer.name=adam"), id="adam"),
    pytest.param(TINY, (*NARROW, "--config.augment.flip=true"), id="flip"),
])
def test_variant_trains_and_predicts(cli_main, data, tmp_path, config_file, options):
  workdir = tmp_path / "run"
  code, out, err = cli_main("train", "--config", config_file, "--workdir", workdir, "--data-dir",
                            data, "--config.num_epochs=1", "--config.data.subset=300",
                            "--config.batch_size=32", "--config.data.val_fraction=0.1", *options)
  assert code == 0, err
  summary = last_json(out)
  assert summary["epochs"] == 1 and 0 <= summary["best_val_accuracy"] <= 1
  record = json.loads((workdir / "metrics.jsonl").read_text())
  assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
  saved = provenance.read_config(workdir)
  for option in options:  # Each option is in the run's config.json.
    flat = config.flatten(saved)
    assert config.flatten(config.apply_overrides(saved, [option.removeprefix("--config.")])) == flat
  code, out, err = cli_main("predict", "--workdir", workdir, "--data-dir", data)
  assert code == 0, err
  assert len(submission_labels(workdir / "submission.csv")) == len(csv_test_images(workdir, data))
  predictor = evaluate.load_predictor(workdir)
  has_batch_stats = saved.model.name == "strided" or saved.model.kwargs.get("batch_norm", False)
  assert ("batch_stats" in predictor.variables) == has_batch_stats


@pytest.mark.parametrize("target", ["test.csv", "train.csv", "checkpoints", "config.json"])
def test_predict_never_writes_over_its_inputs(cli_main, data, guarded, tmp_path, target):
  out = data / target if target.endswith(".csv") else guarded / target
  if target == "checkpoints":
    out = out / "best" / "submission.csv"
  before = {p: p.read_bytes() for p in [data / "test.csv", data / "train.csv"]
            + sorted(q for q in guarded.rglob("*") if q.is_file())}
  line = assert_user_error(cli_main("predict", "--workdir", guarded, "--data-dir", data,
                                    "--out", out))
  assert line.startswith(f"dr-jax: error: --out {out} is ")
  assert "write the submission elsewhere" in line
  assert {p: p.read_bytes() for p in before} == before and not (
      target == "checkpoints" and out.exists())


@pytest.mark.parametrize("change, named", [
    (("--config.seed=5",), "seed 0 → 5"),
    (("--config.data.val_fraction=0.2",), "data.val_fraction 0.1 → 0.2"),
    (("--config.model.kwargs.dense=64",), "model.kwargs.dense 32 → 64"),
])
def test_resume_refuses_a_config_that_changes_the_run(cli_main, data, guarded, change, named):
  before = snapshot(guarded)
  line = assert_user_error(cli_main("train", "--config", TINY, "--workdir", guarded,
                                    "--data-dir", data, *QUICK, *NARROW, *change))
  assert line.startswith(f"dr-jax: error: {guarded} was trained with another config (")
  assert named in line and line.endswith(
      f"resume with the config in {guarded / 'config.json'}, or train into a new --workdir")
  assert snapshot(guarded) == before
