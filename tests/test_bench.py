"""Tests of dr_jax.bench: the PyTorch comparison (torch is not a test dependency), the profile.

`dr-jax bench --vs-torch PYTHON` runs with a stand-in interpreter: a shell script that answers
`-c "import torch"` and prints the reference script's JSON line.
"""

import gzip
import json
import pathlib
import stat

import pytest

from dr_jax import bench, models
from dr_jax.errors import UserError

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "torch_baseline.py"
TINY = SCRIPT.parent / "tiny.py"
# A benchmark of the tiny config's narrow classic CNN that takes seconds.
BENCH = ("bench", "--config", TINY, "--steps", "1", "--repeats", "1", "--predict-images", "16",
         "--batch", "8", "--config.model.kwargs.widths=(8, 16)", "--config.model.kwargs.dense=32")


def _fake_python(tmp_path: pathlib.Path, has_torch: bool = True) -> str:
  """A stand-in interpreter: `-c "import torch"` succeeds or not; a script run records its
  arguments in argv.txt and prints the reference's JSON line."""
  path = tmp_path / "python"
  figures = {"torch_version": "x", "threads": 2, "train_images_per_s": 100.0,
             "predict_images_per_s": 400.0}
  path.write_text(f"""#!/bin/sh
if [ "$1" = "-c" ]; then exit {0 if has_torch else 1}; fi
echo "$*" > {tmp_path / "argv.txt"}
echo '{json.dumps(figures)}'
""")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


@pytest.mark.parametrize("model", ["classic", "strided"])
def test_torch_rates_run_the_reference_for_the_configured_model(tmp_path, model):
  rates = bench.torch_rates(_fake_python(tmp_path), SCRIPT, model, 64, 8, 2, 500)
  assert rates == {"torch_train_images_per_s": 100.0, "torch_predict_images_per_s": 400.0}
  argv = (tmp_path / "argv.txt").read_text().split()
  assert argv == [str(SCRIPT), "--model", model, "--batch", "64", "--steps", "8", "--repeats",
                  "2", "--predict-images", "500"]


def test_torch_rates_pass_the_widths_and_the_parameter_count_the_reference_must_match(tmp_path):
  bench.torch_rates(_fake_python(tmp_path), SCRIPT, "strided", 64, 8, 2, 500, "24,48,96", 184_138)
  argv = (tmp_path / "argv.txt").read_text().split()
  assert argv[-4:] == ["--widths", "24,48,96", "--params", "184138"]


def test_the_reference_script_has_every_model():
  text = SCRIPT.read_text()
  for name in models.MODELS:
    assert f'"{name}": (' in text, name


def test_torch_rates_without_torch_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="cannot import torch"):
    bench.torch_rates(_fake_python(tmp_path, has_torch=False), SCRIPT, "classic", 64, 8, 2, 500)


def _trace(root: pathlib.Path, run: str, events: list[dict]) -> None:
  folder = root / "plugins" / "profile" / run
  folder.mkdir(parents=True)
  (folder / "host.trace.json.gz").write_bytes(gzip.compress(json.dumps(
      {"traceEvents": events}).encode()))


def test_op_times_sums_each_kind_of_op_per_step_from_the_newest_trace(tmp_path):
  op = lambda name, us, ph="X": {"ph": ph, "name": name, "dur": us, "args": {"hlo_op": name}}
  _trace(tmp_path, "2026_01_01_00_00_00", [op("copy.1", 9000.0)])
  _trace(tmp_path, "2026_01_01_00_00_01", [
      op("transpose_copy_fusion.38", 3000.0), op("transpose_copy_fusion.5", 1000.0),
      op("copy", 500.0), op("copy.2", 300.0), op("dot.3", 7000.0, ph="B"),
      op("command_buffer_550", 200.0), op("command_buffer_1", 100.0),
      {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 99000.0, "args": {}},
      {"ph": "M", "name": "thread_name", "args": {"name": "x"}}])
  kinds = bench.op_times(tmp_path, 2)
  assert [kind for kind, _ in kinds] == ["transpose_copy_fusion", "copy", "command_buffer"]
  assert [ms for _, ms in kinds] == pytest.approx([2.0, 0.4, 0.15])


def test_op_times_without_a_profile_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="no profile"):
    bench.op_times(tmp_path, 1)


@pytest.mark.slow
def test_cli_bench_vs_torch_divides_the_jax_rates_by_the_references(cli_main, tmp_path):
  code, out, err = cli_main(*BENCH, "--vs-torch", _fake_python(tmp_path))
  assert code == 0, err
  figures = json.loads(out.strip().splitlines()[-1])
  assert figures["torch_train_images_per_s"] == 100.0
  assert figures["torch_predict_images_per_s"] == 400.0
  assert figures["train_vs_torch"] == figures["train_images_per_s"] / 100.0
  assert figures["predict_vs_torch"] == figures["predict_images_per_s"] / 400.0
  # Compiling is timed apart from the rates: the fused train call, and predict's first call.
  assert figures["train_compile_s"] > 0 and figures["predict_compile_s"] >= 0
  table = dict(line.split(None, 1) for line in out.strip().splitlines()[:-1])
  for key in ("train_vs_torch", "predict_vs_torch", "torch_train_images_per_s"):
    assert table[key] == f"{figures[key]:,.2f}", key
  # The classic CNN at widths (8, 16), dense 32: convs 208 + 1,608 + 1,168 + 2,320, dense
  # 784 × 32 + 32 and 32 × 10 + 10 parameters; the reference must build as many.
  assert figures["params"] == 30_754 and figures["widths"] == "8,16"
  argv = (tmp_path / "argv.txt").read_text().split()
  assert argv == [str(SCRIPT), "--model", "classic", "--batch", "8", "--steps", "1",
                  "--repeats", "1", "--predict-images", "16", "--widths", "8,16",
                  "--params", "30754"]


@pytest.mark.slow
def test_cli_bench_vs_torch_with_an_interpreter_without_torch(cli_main, tmp_path):
  python = _fake_python(tmp_path, has_torch=False)
  code, out, err = cli_main(*BENCH, "--vs-torch", python)
  assert code == 2 and "Traceback" not in err
  assert err.strip().splitlines()[-1] == (
      f"dr-jax: error: --vs-torch: {python} cannot import torch; pip install torch there, or "
      "pass --vs-torch PATH/TO/python of an environment that has it")
  assert not (tmp_path / "argv.txt").exists()
