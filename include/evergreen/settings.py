"""Every environment variable Evergreen reads, in one place, typed.

``current()`` reads the variables on each call and parses them once per distinct environment, so a
deployment sets them once while tests and the demo may change them between calls (the storage root
differs per test). Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

STORAGE_ROOT = "EVERGREEN_STORAGE_ROOT"
STORAGE_CONN_ID = "EVERGREEN_STORAGE_CONN_ID"
SPECS_DIR = "EVERGREEN_SPECS_DIR"
CODE_VERSION = "EVERGREEN_CODE_VERSION"
MLFLOW_ARTIFACT_ROOT = "EVERGREEN_MLFLOW_ARTIFACT_ROOT"
TRAINING_SPILL_DIR = "EVERGREEN_TRAINING_SPILL_DIR"
CAS_SETTLE_SECONDS = "EVERGREEN_CAS_SETTLE_SECONDS"
MLFLOW_UI_URL = "EVERGREEN_MLFLOW_UI_URL"
# `evergreen serve` only (the online scoring service, evergreen.serving).
SERVING_POLL_SECONDS = "EVERGREEN_SERVING_POLL_SECONDS"
SERVING_FLUSH_ROWS = "EVERGREEN_SERVING_FLUSH_ROWS"
SERVING_FLUSH_SECONDS = "EVERGREEN_SERVING_FLUSH_SECONDS"
SERVING_MAX_BUFFERED_ROWS = "EVERGREEN_SERVING_MAX_BUFFERED_ROWS"

NAMES = (STORAGE_ROOT, STORAGE_CONN_ID, SPECS_DIR, CODE_VERSION, MLFLOW_ARTIFACT_ROOT, TRAINING_SPILL_DIR,
         CAS_SETTLE_SECONDS, MLFLOW_UI_URL, SERVING_POLL_SECONDS, SERVING_FLUSH_ROWS, SERVING_FLUSH_SECONDS,
         SERVING_MAX_BUFFERED_ROWS)
DEFAULT_STORAGE_ROOT = "~/.evergreen/storage"
# Read by MLflow itself (tracking, registry and the artifact proxy), not here; every Airflow process that
# runs tasks needs it.
MLFLOW_VARIABLES = ("MLFLOW_TRACKING_URI",)


@dataclass(frozen=True)
class Settings:
    """Evergreen's configuration (MLflow's own ``MLFLOW_*`` variables are read by MLflow itself)."""

    storage_root: str = DEFAULT_STORAGE_ROOT  # a local folder or s3://bucket/prefix
    storage_conn_id: str = "aws_default"  # the Airflow connection ObjectStoragePath uses for s3://
    specs_dir: str | None = None  # extra folder of user specs, beside include/specs
    code_version: str = ""  # appended to the package version in lineage tags (e.g. the git sha)
    mlflow_artifact_root: str = ""  # where new experiments put artifacts without a tracking server
    training_spill_dir: str | None = None  # per-day training matrices (default: the temp dir)
    cas_settle_seconds: float = 2.0  # wait between moving the champion alias and verifying it
    mlflow_ui_url: str = ""  # where browsers open MLflow (the Evergreen page's links); default: the tracking server
    serving_poll_seconds: float = 30.0  # how often `evergreen serve` reads the champion alias
    serving_flush_rows: int = 5_000  # the online prediction log writes a part file at this many rows ...
    serving_flush_seconds: float = 30.0  # ... or this long after the last write, whichever comes first
    serving_max_buffered_rows: int = 200_000  # unwritten rows beyond this (storage down): requests get 503


@functools.lru_cache(maxsize=8)
def _parse(values: tuple[str | None, ...]) -> Settings:
    raw = dict(zip(NAMES, values, strict=True))
    return Settings(
        storage_root=raw[STORAGE_ROOT] or DEFAULT_STORAGE_ROOT,
        storage_conn_id=raw[STORAGE_CONN_ID] if raw[STORAGE_CONN_ID] is not None else "aws_default",
        specs_dir=raw[SPECS_DIR] or None,
        code_version=(raw[CODE_VERSION] or "").strip(),
        mlflow_artifact_root=(raw[MLFLOW_ARTIFACT_ROOT] or "").rstrip("/"),
        training_spill_dir=raw[TRAINING_SPILL_DIR] or None,
        cas_settle_seconds=float(raw[CAS_SETTLE_SECONDS] or "2.0"),
        mlflow_ui_url=(raw[MLFLOW_UI_URL] or "").rstrip("/"),
        serving_poll_seconds=float(raw[SERVING_POLL_SECONDS] or "30"),
        serving_flush_rows=int(raw[SERVING_FLUSH_ROWS] or "5000"),
        serving_flush_seconds=float(raw[SERVING_FLUSH_SECONDS] or "30"),
        serving_max_buffered_rows=int(raw[SERVING_MAX_BUFFERED_ROWS] or "200000"),
    )


def forbid_pickled_models() -> None:
    """Make MLflow refuse to unpickle a model in this process (Evergreen's models are models from code)."""
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"


def single_threaded_scoring() -> None:
    """One OpenMP thread per model call in this process, unless ``OMP_NUM_THREADS`` says otherwise: the
    online server scores concurrent requests on its own threads, and XGBoost's threads per request only
    contend with them (a one-row prediction was 4x slower with two threads on a busy 2-core machine).
    Call before XGBoost is imported."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def current() -> Settings:
    """The settings of the current environment."""
    return _parse(tuple(os.environ.get(name) for name in NAMES))
