"""The package as `pip install .` builds it: shipped configs, license, version, entry point."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """The wheel pip builds from this checkout (its own build environment: setuptools>=77)."""
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                  str(REPO)], check=True, capture_output=True, text=True, timeout=600)
  (path,) = out.glob("dr_jax-*.whl")
  return path


@pytest.mark.slow
def test_the_wheel_ships_the_experiments_and_the_license(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  for config in ("default", "strided", "classic", "tiny", "ablations/adam"):
    assert f"dr_jax/experiments/{config}.py" in names
  assert "dr_jax/experiments/torch_baseline.py" in names  # bench --vs-torch runs it.
  assert not [n for n in names if n.startswith(("tests/", "experiments/", "data/"))]
  metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
  text = zipfile.ZipFile(wheel).read(metadata).decode()
  assert "License-Expression: Apache-2.0" in text
  assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
  from dr_jax import __version__

  assert f"\nVersion: {__version__}\n" in text


@pytest.mark.slow
def test_an_installed_copy_finds_its_default_config_from_any_directory(wheel, tmp_path, cli_env):
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                  str(site), str(wheel)], check=True, capture_output=True, timeout=300)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(cli_env, PYTHONPATH=str(site))  # The installed copy before the checkout's.

  def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout

  where = run("-c", "import dr_jax.experiments.default as d; print(d.__file__)").strip()
  assert pathlib.Path(where) == site / "dr_jax" / "experiments" / "default.py"
  assert "schedule.name=onecycle" in run("-m", "dr_jax", "config", "default").splitlines()
  assert "Total Parameters: 887,530" in run("-m", "dr_jax", "summary", "--config", "ablations/adam")
  assert list(elsewhere.iterdir()) == []
