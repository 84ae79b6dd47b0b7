"""Online serving: ``evergreen serve --spec S`` scores ``models:/<registered name>@champion`` over HTTP.

A small FastAPI app, run by uvicorn (docs/serving.md):

* ``POST /predict``: one row (a JSON object) or a batch (a JSON array of objects), checked against the
  spec's schema (:class:`RequestSchema`: a 422 names each bad field and row); the answer holds the scores
  in row order, the model version that made them and the request id.
* ``GET /health``: the model served (name, version, run, when it was loaded), the last alias check, any
  version refused, the prediction log's state; 503 while no model is loaded.
* ``GET /schema``: what a row may hold.

**The model follows the alias.** :class:`ChampionWatcher` polls ``@champion`` every
``EVERGREEN_SERVING_POLL_SECONDS``; a new version is downloaded, its files checked against the hashes
recorded at training (``registry.load_version``: ``tracking.load_verified_model``) and loaded in the
watcher's thread, then swapped in as one reference assignment. A request reads that reference once, so it
finishes on the model it started with while the next one gets the new model: a promotion or a rollback
drops no request. A version that fails verification is refused (logged as an error, listed in /health)
and the old one keeps serving.

**Every prediction is logged** (:class:`PredictionLog`) with its model version and request under
``predictions/online/<spec>/ds=<event day>/`` of the storage root: the event day is the row's timestamp's
day in the spec's timezone, as for the feature partitions, so the outcome join matches online predictions
with labels by the same delay rules (``outcomes.join_outcomes``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import re
import threading
import uuid
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from evergreen import layout, settings, storage
from evergreen.errors import IntegrityError
from evergreen.etl.labels import label_text
from evergreen.etl.validation import BOOLEAN_VALUES
from evergreen.spec import ROW_KEY, TIME_FEATURES, FeatureType, PipelineSpec

log = logging.getLogger(__name__)

MAX_ROWS_PER_REQUEST = 10_000
MAX_ERRORS = 100  # listed in a 422; the total is given too
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # a caller's id is kept when it looks like one
DAY = "ds"  # the partition day of a logged row (the folder, not a column of the part file)
_MISSING = object()
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}  # label texts of etl.validation.BOOLEAN_VALUES


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _no_constant(name: str) -> Any:
    """JSON has no NaN or Infinity (Python's parser would take them)."""
    raise ValueError(f"{name} is not JSON")


def _shown(value: Any) -> str:
    """A request value as the error message quotes it (JSON, cut short)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------------ requests


class PayloadError(ValueError):
    """A request body the schema refuses: every bad (row, field) with the reason."""

    def __init__(self, errors: list[dict[str, Any]], status: int = 422) -> None:
        self.errors = errors
        self.status = status
        rows = {e["row"] for e in errors if e["row"] is not None}
        super().__init__(f"{len(errors)} invalid value(s) in {len(rows)} row(s)" if rows else errors[0]["error"])

    def body(self) -> dict[str, Any]:
        return {"detail": str(self), "errors": self.errors[:MAX_ERRORS], "errors_total": len(self.errors)}


@dataclasses.dataclass(frozen=True)
class Field:
    """One field a request row may carry: an entity key, the event timestamp or a spec feature, with the
    data contract the ETL enforces on it (type, nullability, min/max, allowed values)."""

    name: str
    kind: str  # "key", "timestamp" or a FeatureType value
    required: bool  # present and not null
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None  # label texts (etl.labels.label_text): 1, 1.0 and "1" are one code
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "required": self.required, "nullable": not self.required,
                "min": self.minimum, "max": self.maximum,
                "allowed_values": list(self.allowed) if self.allowed is not None else None,
                "description": self.description}


class RequestSchema:
    """The rows ``POST /predict`` accepts, from the spec: its entity keys and event timestamp (required; a
    spec without keys has a ``row_key`` derived from the request when none is given) and its features.

    A feature that is not nullable must be present and not null; a nullable one may be null or left out.
    Numbers are JSON numbers (not strings), within the feature's min/max; categoricals are one of its
    ``allowed_values`` when it has them; booleans are what the ETL accepts (true/false, 0/1, "true"/"false").
    The time features are derived from the timestamp by the ETL's own function, so a request does not send
    them. **Unknown fields are refused** (a 422 naming them): a misspelt feature must not be scored as
    missing. ``max_null_fraction`` limits a day's data, not one request, and is left to the drift monitor.
    """

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        keys = [Field(key, "key", required=not spec.derive_row_key,
                      description="entity key (text or integer)" + (
                          "; derived from the request id when left out" if spec.derive_row_key else ""))
                for key in spec.entity_keys]
        timestamp = Field(spec.timestamp_column, "timestamp", required=True,
                          description=f"ISO 8601 event time; without an offset it is read in {spec.schedule.timezone}")
        # An attribute (``use: attribute``, e.g. a fairness group) is no model input: optional in a request,
        # checked like a feature when given, and logged, so online scores can be grouped by it.
        features = [Field(f.name, f.type.value, required=not f.nullable and f.use == "model", minimum=f.min,
                          maximum=f.max, allowed=tuple(label_text(v) for v in f.allowed_values)
                          if f.allowed_values is not None else None,
                          description=f.description if f.use == "model"
                          else " ".join(["attribute, not a model input (optional).", f.description]).strip())
                    for f in spec.features]
        self.fields = {f.name: f for f in (*keys, timestamp, *features)}
        self.derived = [name for name in TIME_FEATURES if spec.etl.time_features]

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.name, "fields": [f.to_dict() for f in self.fields.values()],
                "derived": self.derived, "unknown_fields": "refused", "max_rows_per_request": MAX_ROWS_PER_REQUEST,
                "body": "one row as a JSON object, or a batch as a JSON array of objects"}

    def parse(self, payload: Any, request_id: str) -> pd.DataFrame:
        """The model's input frame for ``payload`` (keys, timestamp, features, derived time features), with
        the partition day of each row in :data:`DAY`. Raises PayloadError listing every bad value."""
        rows = [payload] if isinstance(payload, dict) else payload
        if not isinstance(rows, list):
            raise PayloadError([{"row": None, "field": None,
                                 "error": "the body must be a JSON object (one row) or an array of objects (a batch)"}])
        if not rows:
            raise PayloadError([{"row": None, "field": None, "error": "the batch is empty"}])
        if len(rows) > MAX_ROWS_PER_REQUEST:
            raise PayloadError([{"row": None, "field": None, "error": f"{len(rows)} rows: at most "
                                 f"{MAX_ROWS_PER_REQUEST} per request"}], status=413)
        errors: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                errors.append({"row": i, "field": None, "error": f"a row must be a JSON object, got {_shown(row)}"})
                continue
            for name in sorted(row.keys() - self.fields.keys()):
                why = "derived from the timestamp, not sent" if name in self.derived else "not in the spec's schema"
                errors.append({"row": i, "field": name, "error": f"unknown field ({why})"})
        rows = [row if isinstance(row, dict) else {} for row in rows]  # reported above; its fields are absent
        columns = {}
        for field in self.fields.values():
            name = field.name
            columns[name] = self._column(field, [row.get(name, _MISSING) for row in rows], errors)
        if errors:
            raise PayloadError(sorted(errors, key=lambda e: (e["row"] is None, e["row"] or 0)))
        return self._frame(columns, request_id)

    def _column(self, field: Field, values: list[Any], errors: list[dict[str, Any]]) -> list[Any] | np.ndarray:
        """The field's values normalised (None where null or absent; numbers as a float64 array, NaN where
        null); each bad one added to ``errors``."""
        if field.kind == FeatureType.NUMERIC:
            numbers = _numbers(field, values)
            if numbers is not None:
                return numbers
        if field.kind in (FeatureType.CATEGORICAL, "key") and all(type(v) is str for v in values):
            # Text only (the common case): each distinct value is checked once.
            checked = {v: _check(field, v) for v in set(values)}
            if all(problem is None for _, problem in checked.values()):
                return [checked[v][0] for v in values]
        out: list[Any] = []
        seen: dict[tuple[type, Any], tuple[Any, str | None]] = {}  # a category or flag is checked once
        for i, value in enumerate(values):
            if value is _MISSING or value is None:
                if field.required:
                    errors.append({"row": i, "field": field.name,
                                   "error": "is required" if value is _MISSING else "must not be null"})
                out.append(None)
                continue
            try:
                key = (type(value), value)
                normalised, problem = seen[key] if key in seen else seen.setdefault(key, _check(field, value))
            except TypeError:  # unhashable (a list or an object): refused by _check
                normalised, problem = _check(field, value)
            if problem is not None:
                errors.append({"row": i, "field": field.name, "error": problem})
            out.append(normalised)
        if field.kind == FeatureType.NUMERIC:
            return np.array([np.nan if v is None else v for v in out], dtype="float64")
        return out

    def _frame(self, columns: dict[str, list[Any]], request_id: str) -> pd.DataFrame:
        from evergreen.etl.features import add_time_features

        spec = self.spec
        data: dict[str, Any] = {}
        for key in spec.entity_keys:
            values = columns[key]
            if key == ROW_KEY and spec.derive_row_key:
                values = [v if v is not None else f"{request_id}-{i}" for i, v in enumerate(values)]
            data[key] = pd.Series(values, dtype="str")
        stamps = _timestamps(columns[spec.timestamp_column], spec.schedule.timezone)
        data[spec.timestamp_column] = stamps
        for feature in spec.features:
            values = columns[feature.name]
            if feature.type == FeatureType.NUMERIC:
                data[feature.name] = values  # a float64 array already
            elif feature.type == FeatureType.BOOLEAN:
                data[feature.name] = pd.Series(values, dtype="boolean")
            else:  # label texts, as the ETL stores categoricals
                data[feature.name] = pd.Series(values, dtype="str")
        frame = add_time_features(pd.DataFrame(data), spec)
        frame[DAY] = stamps.dt.tz_convert(spec.schedule.timezone).dt.date
        return frame


def _numbers(field: Field, values: list[Any]) -> np.ndarray | None:
    """A numeric column checked in one pass when every value is a number and fits (the common case);
    None sends it value by value through :func:`_check`, for the messages."""
    kinds = set(map(type, values))
    if not kinds <= ({int, float} if field.required else {int, float, type(None)}) or not values:
        return None
    try:
        numbers = np.array([np.nan if v is None else v for v in values] if type(None) in kinds else values,
                           dtype="float64")
    except OverflowError:  # an integer beyond float range
        return None
    given = numbers[~np.isnan(numbers)] if type(None) in kinds else numbers
    if not np.isfinite(given).all() or (field.minimum is not None and (given < field.minimum).any()) or (
            field.maximum is not None and (given > field.maximum).any()):
        return None
    return numbers


def _check(field: Field, value: Any) -> tuple[Any, str | None]:
    """``(normalised value, None)`` or ``(None, why it is refused)`` for one non-null value."""
    kind = field.kind
    if kind == "key":
        if isinstance(value, str) and value or isinstance(value, int) and not isinstance(value, bool):
            return str(value), None
        return None, f"must be a non-empty text or an integer, got {_shown(value)}"
    if kind == "timestamp":
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return dt.datetime.fromisoformat(value), None
        return None, f"must be an ISO 8601 date and time, got {_shown(value)}"
    if kind == FeatureType.NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None, f"must be a finite number, got {_shown(value)}"
        number = float(value)
        if field.minimum is not None and number < field.minimum:
            return None, f"{_shown(value)} is below the minimum {field.minimum:g}"
        if field.maximum is not None and number > field.maximum:
            return None, f"{_shown(value)} is above the maximum {field.maximum:g}"
        return number, None
    if not isinstance(value, str | int | float):  # bool is an int
        return None, f"must be a text, number or boolean, got {_shown(value)}"
    text = label_text(value)
    if kind == FeatureType.BOOLEAN:
        if text in _BOOLEANS and value in BOOLEAN_VALUES:
            return _BOOLEANS[text], None
        return None, f"must be true or false, got {_shown(value)}"
    if field.allowed is not None and text not in field.allowed:
        return None, f"{_shown(value)} is not one of the allowed values {list(field.allowed)}"
    return text, None


def _timestamps(values: list[dt.datetime], timezone: str) -> pd.Series:
    """Parsed request timestamps as UTC; naive ones are local times in ``timezone``, read by the ETL's
    daylight-saving rule (``etl.ingest.localize_naive``)."""
    from evergreen.etl.ingest import localize_naive

    naive = [v.tzinfo is None for v in values]
    if not any(naive):
        return pd.Series(pd.to_datetime(values, utc=True)).astype("datetime64[us, UTC]")
    out = pd.Series([pd.Timestamp(v).tz_convert("UTC") if not n else pd.NaT for v, n in zip(values, naive, strict=True)],
                    dtype="datetime64[us, UTC]")
    if any(naive):
        local = pd.Series([pd.Timestamp(v) if n else pd.NaT for v, n in zip(values, naive, strict=True)],
                          dtype="datetime64[us]")
        resolved = localize_naive(local[naive], timezone)[0].dt.tz_convert("UTC")
        out[naive] = resolved.astype("datetime64[us, UTC]")
    return out


# ------------------------------------------------------------------------------------------ the model


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A loaded, verified registered version."""

    version: str
    run_id: str
    model: Any  # the pyfunc
    loaded_at: dt.datetime

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's own predict on the columns its signature names. MLflow's per-call signature check
        is skipped (a fifth of a one-row request): :class:`RequestSchema` checked the rows against the spec
        the signature was made from (``tracking.model_signature``), and the watcher that the signature's
        columns are the spec's."""
        schema = self.model.metadata.get_input_schema()
        columns = schema.input_names() if schema is not None else list(frame.columns)
        scores = self.model.unwrap_python_model().predict(None, frame[columns])
        return np.asarray(scores, dtype="float64").reshape(-1)


class IncompatibleModelError(IntegrityError):
    """A registered version needs inputs this spec's requests do not give."""


class ChampionWatcher:
    """Follows ``@champion``: :meth:`check` reads the alias and, for a version not served yet, loads and
    verifies it, then swaps :attr:`current` (one reference assignment). Polled from its own thread."""

    def __init__(self, spec: PipelineSpec, poll_seconds: float) -> None:
        self.spec = spec
        self.poll_seconds = poll_seconds
        self.current: ServedModel | None = None
        self.alias_version: str | None = None
        self.last_check_at: dt.datetime | None = None
        self.last_check_error: str | None = None
        self.refused: dict[str, str] = {}  # version -> why (refused once, not downloaded again)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Read the alias once; serve a new version if it verifies and fits the spec's requests."""
        from mlflow import MlflowClient

        from evergreen import registry

        client = MlflowClient()
        found = registry.champion(self.spec, client)
        self.last_check_at = _now()
        self.alias_version = None if found is None else str(found.version)
        served = self.current
        if found is None:
            if served is not None:
                log.warning("%s has no @%s now; still serving version %s", self.spec.registered_model_name,
                            registry.CHAMPION, served.version)
            return
        version = str(found.version)
        if (served is not None and served.version == version) or version in self.refused:
            return
        log.info("loading %s version %s (@%s), verifying its files", self.spec.registered_model_name, version,
                 registry.CHAMPION)
        try:
            model = registry.load_version(self.spec, version, client)
            self._check_inputs(model, version)
        except IntegrityError as exc:
            self.refused[version] = str(exc)
            log.error("REFUSED %s version %s (@%s): %s; %s", self.spec.registered_model_name, version,
                      registry.CHAMPION, exc,
                      f"still serving version {served.version}" if served else "no model is served")
            return
        self.current = ServedModel(version, str(found.run_id), model, _now())  # the swap
        log.info("now serving %s version %s%s", self.spec.registered_model_name, version,
                 f" (was {served.version})" if served else "")

    def _check_inputs(self, model: Any, version: str) -> None:
        schema = model.metadata.get_input_schema()
        wanted = set(schema.input_names()) if schema is not None else set()
        missing = sorted(wanted - set(self.spec.model_features))
        if missing:
            raise IncompatibleModelError(f"version {version} needs inputs {missing} that spec {self.spec.name}'s "
                                         "requests do not give")

    def check_and_record(self) -> None:
        """:meth:`check`, a failure recorded for /health and logged with its traceback (the next poll retries)."""
        try:
            self.check()
        except Exception as exc:  # the tracking server or the artifact store is unreachable: keep serving
            self.last_check_at = _now()
            self.last_check_error = f"{type(exc).__name__}: {exc}"
            log.exception("checking @champion of %s failed; still serving version %s", self.spec.registered_model_name,
                          self.current.version if self.current else None)
            return
        self.last_check_error = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="champion-watcher", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check_and_record()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def health(self) -> dict[str, Any]:
        served = self.current
        return {"model_name": self.spec.registered_model_name,
                "model_version": served.version if served else None,
                "run_id": served.run_id if served else None,
                "loaded_at": served.loaded_at.isoformat() if served else None,
                "alias": "champion", "alias_version": self.alias_version,
                "last_alias_check_at": self.last_check_at.isoformat() if self.last_check_at else None,
                "last_alias_check_error": self.last_check_error, "poll_seconds": self.poll_seconds,
                "refused_versions": dict(self.refused)}


# ------------------------------------------------------------------------------------- prediction log


class PredictionLogFullError(RuntimeError):
    """The log holds its maximum of unwritten rows (storage unreachable): no more predictions are served."""


class PredictionLog:
    """Every served prediction, buffered and written as Parquet parts of
    ``predictions/online/<spec>/ds=<event day>/`` (``storage.append_part``).

    A part per event day is written once ``flush_rows`` rows wait, every ``flush_seconds`` otherwise, and on
    shutdown. Rows are kept as columns of arrays so that a flush of many one-row requests stays cheap. A
    failed write keeps the rows for the next flush; beyond ``max_rows`` waiting rows :meth:`add` refuses, so
    a prediction is never served without being logged (a crash loses at most the unwritten rows).
    """

    def __init__(self, spec: PipelineSpec, *, flush_rows: int, flush_seconds: float, max_rows: int) -> None:
        self.spec = spec
        self.flush_rows, self.flush_seconds, self.max_rows = flush_rows, flush_seconds, max_rows
        self.dtypes = {**{key: "str" for key in spec.entity_keys}, spec.timestamp_column: "datetime64[us, UTC]",
                       **{name: _stored_dtype(kind) for name, kind in spec.model_features.items()},
                       **{f.name: _stored_dtype(f.type) for f in spec.features if f.use == "attribute"},
                       "prediction": "float64", "model_version": "str", "request_id": "str", "request_row": "int64",
                       "served_at": "datetime64[us, UTC]", DAY: "object"}
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0  # waiting or being written
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self.written_rows = self.written_parts = 0
        self.last_flush_at: dt.datetime | None = None
        self.last_error: str | None = None
        self.location: str | None = None

    def add(self, frame: pd.DataFrame, scores: np.ndarray, version: str, request_id: str,
            served_at: dt.datetime) -> None:
        """Buffer one request's rows (``frame`` from :meth:`RequestSchema.parse`) with their scores."""
        n = len(frame)
        columns = self._arrays(frame)
        columns.update(prediction=np.asarray(scores, dtype="float64"), model_version=np.full(n, version, dtype=object),
                       request_id=np.full(n, request_id, dtype=object), request_row=np.arange(n, dtype="int64"),
                       served_at=np.full(n, np.datetime64(served_at.replace(tzinfo=None), "us")))
        with self._lock:
            if self._pending_rows + n > self.max_rows:
                raise PredictionLogFullError(f"the online prediction log holds {self._pending_rows} unwritten rows "
                                             f"(max {self.max_rows}); last write error: {self.last_error}")
            self._pending.append(columns)
            self._pending_rows += n
            if self._pending_rows >= self.flush_rows:
                self._wake.set()

    def flush(self) -> int:
        """Write what waits, one part per event day; the rows written. A failed day's rows wait again."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            frame = self._frame(batch)
            written, unwritten = 0, []
            error: Exception | None = None
            for ds, rows in frame.groupby(DAY, sort=True):
                if error is None:
                    try:
                        directory = storage.partition_dir(layout.ONLINE_PREDICTIONS, self.spec.name, ds)
                        data = storage.frame_to_parquet_bytes(rows.drop(columns=[DAY]).reset_index(drop=True))
                        storage.append_part(directory, data, written_at=_now())
                        written += len(rows)
                        self.written_parts += 1
                        continue
                    except Exception as exc:  # kept and retried; raised below once the rest is back in the queue
                        error = exc
                unwritten.append(self._arrays(rows))
            with self._lock:
                self._pending[:0] = unwritten
                self._pending_rows -= written
                self.written_rows += written
                self.last_flush_at = _now()
                self.last_error = None if error is None else f"{type(error).__name__}: {error}"
            if error is not None:
                raise error
            return written

    def _arrays(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The logged columns of ``frame`` as numpy arrays (times as UTC ``datetime64[us]``)."""
        return {name: frame[name].to_numpy(dtype="datetime64[us]") if dtype.startswith("datetime")
                else frame[name].to_numpy() for name, dtype in self.dtypes.items() if name in frame.columns}

    def _frame(self, batch: list[dict[str, np.ndarray]]) -> pd.DataFrame:
        data = {}
        for name, dtype in self.dtypes.items():
            if name not in batch[0]:
                continue
            values = pd.Series(np.concatenate([b[name] for b in batch]))
            if dtype == "datetime64[us, UTC]" and values.dt.tz is None:
                values = values.dt.tz_localize("UTC")
            data[name] = values.astype(dtype)
        return pd.DataFrame(data)

    def start(self) -> None:
        # Resolved now: a bad storage root fails the start, and Airflow's import is not paid by a request.
        self.location = str(storage.at(layout.zone(layout.ONLINE_PREDICTIONS, self.spec.name)))
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # recorded in last_error (/health); the rows wait for the next flush
                log.exception("writing the online prediction log of %s failed; %d rows wait", self.spec.name,
                              self._pending_rows)

    def close(self) -> None:
        """Stop the flusher and write everything left (raises when that fails: those rows are lost)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        self.flush()

    def health(self) -> dict[str, Any]:
        return {"buffered_rows": self._pending_rows, "written_rows": self.written_rows,
                "written_parts": self.written_parts, "flush_rows": self.flush_rows, "flush_seconds": self.flush_seconds,
                "last_flush_at": self.last_flush_at.isoformat() if self.last_flush_at else None,
                "last_error": self.last_error, "location": self.location}


def _stored_dtype(kind: FeatureType) -> str:
    """A model column's dtype in the log, as the feature partitions store it."""
    return {FeatureType.NUMERIC: "float64", FeatureType.BOOLEAN: "boolean"}.get(kind, "str")


# ------------------------------------------------------------------------------------------ the app


class ServingError(RuntimeError):
    """A request the service cannot answer now (HTTP ``status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Service:
    """What the routes call: the schema, the watcher and the log of one spec."""

    def __init__(self, spec: PipelineSpec, *, poll_seconds: float | None = None, flush_rows: int | None = None,
                 flush_seconds: float | None = None, max_buffered_rows: int | None = None) -> None:
        cfg = settings.current()
        self.spec = spec
        self.schema = RequestSchema(spec)
        self.watcher = ChampionWatcher(spec, poll_seconds if poll_seconds is not None else cfg.serving_poll_seconds)
        self.log = PredictionLog(
            spec, flush_rows=flush_rows if flush_rows is not None else cfg.serving_flush_rows,
            flush_seconds=flush_seconds if flush_seconds is not None else cfg.serving_flush_seconds,
            max_rows=max_buffered_rows if max_buffered_rows is not None else cfg.serving_max_buffered_rows)

    def predict(self, body: bytes, request_id: str) -> dict[str, Any]:
        """Score a request body and log it; the answer's JSON."""
        # Read once: this request finishes on this model whatever the watcher swaps in meanwhile.
        served = self.watcher.current
        if served is None:
            raise ServingError(503, f"no model loaded yet for {self.spec.registered_model_name}@champion "
                                    f"(last alias check error: {self.watcher.last_check_error})")
        try:
            payload = json.loads(body, parse_constant=_no_constant)
        except ValueError as exc:
            raise PayloadError([{"row": None, "field": None, "error": f"the body is not JSON: {exc}"}], status=400) \
                from None
        frame = self.schema.parse(payload, request_id)
        scores = served.score(frame)
        try:
            self.log.add(frame, scores, served.version, request_id, _now())
        except PredictionLogFullError as exc:
            raise ServingError(503, str(exc)) from exc
        return {"request_id": request_id, "model_name": self.spec.registered_model_name,
                "model_version": served.version, "rows": len(scores), "scores": scores.tolist()}

    def health(self) -> tuple[int, dict[str, Any]]:
        model = self.watcher.health()
        refused_champion = model["alias_version"] in model["refused_versions"]
        ok = model["model_version"] is not None
        degraded = refused_champion or model["last_alias_check_error"] or self.log.last_error
        status = "ok" if ok and not degraded else "degraded" if ok else "unavailable"
        return (200 if ok else 503), {"status": status, "spec": self.spec.name, **model,
                                      "prediction_log": self.log.health()}


def create_app(spec: PipelineSpec, **options: Any) -> FastAPI:
    """The FastAPI app serving ``spec``'s champion (``options``: :class:`Service`'s, else the settings)."""
    service = Service(spec, **options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
        service.log.start()
        await run_in_threadpool(service.watcher.check_and_record)  # a model before the first request, if any
        service.watcher.start()
        try:
            yield
        finally:
            service.watcher.stop()
            await run_in_threadpool(service.log.close)
            log.info("stopped; %d online predictions written in %d parts", service.log.written_rows,
                     service.log.written_parts)

    app = FastAPI(title=f"Evergreen serving: {spec.name}", lifespan=lifespan,
                  description=f"Scores of models:/{spec.registered_model_name}@champion (docs/serving.md)")
    app.state.service = service

    @app.exception_handler(PayloadError)
    async def _payload_error(request: Request, exc: PayloadError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        asked = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = asked if REQUEST_ID.match(asked) else uuid.uuid4().hex
        body = await request.body()
        answer = await run_in_threadpool(service.predict, body, request_id)
        return JSONResponse(answer, headers={REQUEST_ID_HEADER: request_id,
                                             "X-Model-Version": answer["model_version"]})

    @app.get("/health")
    async def health() -> JSONResponse:
        status, body = service.health()
        return JSONResponse(body, status_code=status)

    @app.get("/schema")
    async def schema() -> Mapping[str, Any]:
        return service.schema.to_dict()

    return app


def serve(spec: PipelineSpec, *, host: str, port: int, **options: Any) -> None:
    """Run the app with uvicorn until SIGINT/SIGTERM (in-flight requests finish, the log is written)."""
    settings.single_threaded_scoring()
    import uvicorn
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set("false")  # a model download is a log line, not a progress bar
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    # No access log: every prediction is in the prediction log with its request id.
    uvicorn.run(create_app(spec, **options), host=host, port=port, access_log=False, timeout_graceful_shutdown=30,
                log_level="info")
