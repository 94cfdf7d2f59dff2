"""Kaggle's Digit Recognizer competition: credentials, the API client, and submitting."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
from typing import Any

from dr_jax.errors import UserError

COMPETITION = "digit-recognizer"
# What kaggle returns, not raises, when the upload failed: a bare str in 1.6 and 1.7, the
# response's message (KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE) in newer releases.
UPLOAD_FAILED = "Could not submit to competition"
NO_CREDENTIALS = ("no Kaggle credentials: put kaggle.json in ~/.kaggle/ (or set KAGGLE_USERNAME "
                  "and KAGGLE_KEY)")


def kaggle_json_paths() -> list[pathlib.Path]:
  """Return the kaggle.json locations the Kaggle client reads."""
  paths = [pathlib.Path.home() / ".kaggle" / "kaggle.json"]
  if config_dir := os.environ.get("KAGGLE_CONFIG_DIR"):
    paths.insert(0, pathlib.Path(config_dir) / "kaggle.json")
  return paths


def has_credentials() -> bool:
  """Return whether env vars or a kaggle.json give Kaggle credentials."""
  if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
    return True
  return any(p.is_file() for p in kaggle_json_paths())


def redact(text: str) -> str:
  """Replace any known Kaggle key in text, so error messages never leak it."""
  keys = [os.environ.get("KAGGLE_KEY", "")]
  for path in kaggle_json_paths():
    try:
      keys.append(str(json.loads(path.read_text()).get("key", "")))
    except (OSError, ValueError, AttributeError):
      continue  # An unreadable file holds no key we could leak.
  for key in filter(None, keys):
    text = text.replace(key, "***")
  return text


def kaggle_api() -> Any:
  """Return an authenticated KaggleApi; tests replace this with a fake."""
  try:
    # Importing kaggle authenticates as a side effect, so its errors reach _kaggle's handler too.
    from kaggle.api.kaggle_api_extended import KaggleApi
  except ImportError:
    raise UserError("the kaggle package is not installed: run "
                    "`pip install 'dr-jax[kaggle]'`") from None
  api = KaggleApi()
  api.authenticate()
  return api


def submit_command(path: pathlib.Path, message: str, competition: str = COMPETITION) -> str:
  """The Kaggle client's command line that submits `path`, quoted for a POSIX shell."""
  return (f"kaggle competitions submit -c {shlex.quote(competition)} -f "
          f"{shlex.quote(str(path))} -m {shlex.quote(message)}")


def submission_file(target: pathlib.Path, competition: str = COMPETITION) -> pathlib.Path:
  """`target` itself, or a run directory's submission.csv, checked to be a valid submission
  (with the Digit Recognizer's header when it goes there)."""
  # Here: predict imports jax, which submitting never needs.
  from dr_jax.predict import HEADER, read_labels

  target = pathlib.Path(target)
  path = target / "submission.csv" if target.is_dir() else target
  if not path.is_file():
    fix = f"`dr-jax predict --workdir {target}` writes it" if target.is_dir() else \
        "pass a run directory or a submission CSV"
    raise UserError(f"{path} not found; {fix}")
  # A malformed file fails here, not after an upload.
  read_labels(path, "submission", HEADER if competition == COMPETITION else None)
  return path


def submit(target: pathlib.Path, message: str, competition: str = COMPETITION) -> str:
  """Uploads a run's submission.csv (or a CSV) with `message`; returns what was submitted."""
  if not message.strip():
    raise UserError("submit: the message (-m) is empty; describe the submission, e.g. "
                    "-m \"strided CNN, 30 epochs\"")
  path = submission_file(target, competition)
  if not has_credentials():
    raise UserError(f"{NO_CREDENTIALS}; or submit by hand: "
                    f"{submit_command(path, message, competition)}")
  try:
    api = kaggle_api()
    response = api.competition_submit(str(path), message, competition, quiet=True)
  except UserError:
    raise
  # Broad because kaggle raises OSError, requests.HTTPError or its own ApiException by version.
  except Exception as e:  # pylint: disable=broad-except
    detail = redact(" ".join(str(e).split()) or type(e).__name__)
    raise UserError(f"Kaggle refused {path} for {competition} ({detail}): check the network and "
                    f"that you accepted the rules at https://www.kaggle.com/c/{competition}/rules"
                    ) from None
  said = response if isinstance(response, str) else getattr(response, "message", "")
  said = " ".join(str(said or "").split())
  if said == UPLOAD_FAILED:
    raise UserError(f"Kaggle did not take the upload of {path} for {competition} ({said}); "
                    "try again")
  return f"submitted {path} to {competition}" + (f": {redact(said)}" if said else "")
