"""competition.py: `dr-jax submit` against a fake Kaggle API (never the network or the real
~/.kaggle)."""

from __future__ import annotations

import pathlib
import shlex
import subprocess

import pytest

from dr_jax import competition
from dr_jax.errors import UserError

_KEY = "0123456789abcdef0123456789abcdef"
GOOD = "ImageId,Label\n1,7\n2,2\n"


class _Response:
  """Stands in for kaggle's submit response (ApiCreateSubmissionResponse in 2.x)."""

  def __init__(self, message: str) -> None:
    self.message = message


class _FakeKaggleApi:
  """Records competition_submit calls; answers with `message` or raises `error`."""

  def __init__(self, message: str = "Successfully submitted to Digit Recognizer",
               error: Exception | None = None) -> None:
    self.message, self.error = message, error
    self.calls: list[tuple[str, str, str, bool]] = []

  def competition_submit(self, file_name: str, message: str, competition: str,
                         quiet: bool = False) -> _Response:
    self.calls.append((file_name, message, competition, quiet))
    if self.error is not None:
      raise self.error
    return _Response(self.message)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
  """No credentials and no network unless a test gives them."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
    monkeypatch.delenv(var, raising=False)

  def no_network() -> None:
    raise AssertionError("a test tried to reach Kaggle")

  monkeypatch.setattr(competition, "kaggle_api", no_network)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> _FakeKaggleApi:
  """Credentials in the environment and a fake client."""
  monkeypatch.setenv("KAGGLE_USERNAME", "someone")
  monkeypatch.setenv("KAGGLE_KEY", _KEY)
  fake = _FakeKaggleApi()
  monkeypatch.setattr(competition, "kaggle_api", lambda: fake)
  return fake


@pytest.fixture
def run_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  run = tmp_path / "run"
  run.mkdir()
  (run / "submission.csv").write_text(GOOD)
  return run


def test_submits_a_run_directorys_submission(api, run_dir):
  said = competition.submit(run_dir, "strided, 30 epochs")
  assert api.calls == [(str(run_dir / "submission.csv"), "strided, 30 epochs",
                        "digit-recognizer", True)]
  assert said == (f"submitted {run_dir / 'submission.csv'} to digit-recognizer: "
                  "Successfully submitted to Digit Recognizer")


def test_submits_a_csv_given_by_path(api, tmp_path):
  blend = tmp_path / "blend.csv"
  blend.write_text(GOOD)
  competition.submit(blend, "blend of 3 runs")
  assert api.calls == [(str(blend), "blend of 3 runs", "digit-recognizer", True)]


@pytest.mark.parametrize("where", ["home", "config_dir"])
def test_a_kaggle_json_counts_as_credentials(monkeypatch, tmp_path, run_dir, where):
  folder = tmp_path / "home" / ".kaggle" if where == "home" else tmp_path / "cfg"
  if where == "config_dir":
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(folder))
  folder.mkdir(parents=True)
  (folder / "kaggle.json").write_text('{"username": "someone", "key": "k"}')
  fake = _FakeKaggleApi()
  monkeypatch.setattr(competition, "kaggle_api", lambda: fake)
  competition.submit(run_dir, "m")
  assert len(fake.calls) == 1


def test_without_credentials_the_error_gives_the_exact_command(tmp_path):
  run = tmp_path / "my run"
  run.mkdir()
  (run / "submission.csv").write_text(GOOD)
  with pytest.raises(UserError) as e:
    competition.submit(run, "it's the 'best' one")
  message = str(e.value)
  assert message.startswith("no Kaggle credentials: put kaggle.json in ~/.kaggle/")
  command = message.split("submit by hand: ", 1)[1]
  assert shlex.split(command) == ["kaggle", "competitions", "submit", "-c", "digit-recognizer",
                                  "-f", str(run / "submission.csv"), "-m", "it's the 'best' one"]
  assert "\n" not in message


def test_submit_command_quotes_for_the_shell(tmp_path):
  path = tmp_path / "a b;c.csv"
  command = competition.submit_command(path, "x $(rm -rf /) `y`", "other-comp")
  out = subprocess.run(["sh", "-c", "printf '%s\\n' " + command.split(" ", 3)[3]],
                       capture_output=True, text=True, check=True).stdout
  assert out.splitlines() == ["-c", "other-comp", "-f", str(path), "-m", "x $(rm -rf /) `y`"]


@pytest.mark.parametrize("error", [OSError, ConnectionError, RuntimeError])
def test_an_api_error_is_one_line_naming_the_file_and_hiding_the_key(api, run_dir, error):
  api.error = error(f"403 Forbidden for\nhttps://someone:{_KEY}@www.kaggle.com/api")
  with pytest.raises(UserError) as e:
    competition.submit(run_dir, "m")
  message = str(e.value)
  assert message.startswith(f"Kaggle refused {run_dir / 'submission.csv'} for digit-recognizer "
                            "(403 Forbidden for https://someone:***@www.kaggle.com/api)")
  assert _KEY not in message and "\n" not in message


@pytest.mark.parametrize("bare", [False, True])
def test_a_failed_upload_is_an_error(api, run_dir, monkeypatch, bare):
  """kaggle reports a failed upload by returning it: a bare str in 1.6 and 1.7, an object since."""
  api.message = competition.UPLOAD_FAILED
  if bare:
    monkeypatch.setattr(api, "competition_submit",
                        lambda *args, **kwargs: competition.UPLOAD_FAILED)
  with pytest.raises(UserError) as e:
    competition.submit(run_dir, "m")
  assert str(e.value) == (f"Kaggle did not take the upload of {run_dir / 'submission.csv'} for "
                          "digit-recognizer (Could not submit to competition); try again")


def test_a_run_without_a_submission_says_how_to_make_one(api, tmp_path):
  (tmp_path / "run").mkdir()
  with pytest.raises(UserError) as e:
    competition.submit(tmp_path / "run", "m")
  assert str(e.value) == (f"{tmp_path / 'run' / 'submission.csv'} not found; "
                          f"`dr-jax predict --workdir {tmp_path / 'run'}` writes it")
  with pytest.raises(UserError, match="pass a run directory or a submission CSV"):
    competition.submit(tmp_path / "nothing.csv", "m")
  assert api.calls == []


@pytest.mark.parametrize("content, fragment", [
    ("Id,Label\n1,7\n", "expected the 2 columns ImageId,Label"),
    ("ImageId,Label\n1,seven\n", "line 2: Label must be an integer"),
    ("ImageId,Label\n", "has a header but no rows"),
])
def test_a_malformed_submission_is_refused_before_any_upload(api, tmp_path, content, fragment):
  bad = tmp_path / "bad.csv"
  bad.write_text(content)
  with pytest.raises(UserError, match=fragment):
    competition.submit(bad, "m")
  assert api.calls == []


def test_an_empty_message_is_refused(api, run_dir):
  with pytest.raises(UserError, match="message"):
    competition.submit(run_dir, "  ")
  assert api.calls == []


def test_submit_through_the_cli(cli_main, api, run_dir, monkeypatch):
  monkeypatch.setattr(competition, "has_credentials", lambda: True)  # The CLI clears KAGGLE_*.
  code, out, err = cli_main("submit", run_dir, "-m", "from the CLI")
  assert code == 0, err
  assert out == (f"submitted {run_dir / 'submission.csv'} to digit-recognizer: "
                 "Successfully submitted to Digit Recognizer\n")
  assert api.calls[0][:2] == (str(run_dir / "submission.csv"), "from the CLI")
