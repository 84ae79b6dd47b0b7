"""Streamed training data: the window's days fed to XGBoost in bounded memory.

The window is never held in pandas: XGBoost reads the training (and validation) days one partition at
a time through a DataIter into a QuantileDMatrix (bin indices, not raw values). XGBoost walks an
iterator several times (shape, sketch, index), so the first walk spills each day's prepared matrix
(float32, exactly what XGBoost stores anyway, and category codes) to a temporary folder and later walks
reload it instead of re-reading and re-preparing Parquet. The linear baseline and the reference profile
use a bounded, seeded sample of the training days; the holdout (a few days) stays in memory.

``in_memory_training_data`` is the reference path (the days concatenated in pandas): the same model,
more memory; tests/unit/test_streaming.py holds the two equal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evergreen.errors import DataQualityError
from evergreen.spec import FeatureType, PipelineSpec, TaskType
from evergreen.tracking import DATASET_LOG_ROWS
from evergreen.training.model import FeatureSchema, fit_feature_schema, prepare_features, xgboost_input
from evergreen.training.window import (
    TrainingWindow,
    cap_rows,
    labelled,
    load_day,
    read_window_day,
    target_values,
)

log = logging.getLogger(__name__)


def feature_kinds(spec: PipelineSpec) -> dict[str, str]:
    """Model feature name -> kind (``numeric``, ``categorical``, ``boolean``), in model column order."""
    return {name: FeatureType(kind).value for name, kind in spec.model_features.items()}


SAMPLE_MAX_ROWS = 200_000  # training rows the baseline and the reference profile see, at most
BATCH_ROWS = 262_144  # rows per batch handed to XGBoost (a day is split into several)


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB (Linux; zeros elsewhere)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            current = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration, ValueError):
        current = 0.0
    return current, peak


def release_memory() -> None:
    """Hand freed memory back to the OS (Arrow's pool and glibc keep it otherwise) between big steps.

    No ``gc.collect()``: the matrices and frames are freed by reference counting. A full collection at each
    of the three big steps found nothing to free (RSS the same to the MiB after it, at M) and cost 0.18 s
    each with pandas, scikit-learn and XGBoost loaded, more under Airflow and MLflow: a third of a
    small backtest retrain's overhead."""
    with contextlib.suppress(Exception):
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


class StepTimer:
    """Wall time and memory after each step of a training run: logged, and kept with the run."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.steps: list[dict[str, Any]] = []

    def mark(self, step: str, **info: Any) -> None:
        now = time.perf_counter()
        current, peak = _rss_mib()
        entry = {"step": step, "seconds": round(now - self.last, 3), "rss_mib": round(current),
                 "peak_rss_mib": round(peak), **info}
        self.steps.append(entry)
        self.last = now
        log.info("training step %s: %.1f s, RSS %.0f MiB (peak %.0f MiB) %s", step, entry["seconds"], current, peak,
                 info or "")

    def to_dict(self) -> dict[str, Any]:
        return {"total_seconds": round(time.perf_counter() - self.started, 3), "steps": self.steps}


@dataclass
class _WindowScan:
    """What a cheap first pass (targets and categorical columns only) learns about the training days."""

    rows: dict[dt.date, int]
    categories: dict[str, set[str]]
    classes: set[float]


def _scan_days(spec: PipelineSpec, window: TrainingWindow, kinds: Mapping[str, str]) -> _WindowScan:
    """Row counts, observed categories (training days) and label checks (training + validation days)."""
    categorical = [name for name, kind in kinds.items() if kind == "categorical"]
    keys = list(spec.entity_keys) if spec.window.max_rows_per_day else []
    columns = [*keys, *categorical, spec.target.name]
    scan = _WindowScan(rows={}, categories={name: set() for name in categorical}, classes=set())
    train_days = set(window.train_days)
    for ds in [*window.train_days, *window.validation_days]:
        frame = read_window_day(spec, window, ds, columns)
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise DataQualityError(f"{spec.name} ds={ds} lacks columns {absent}")
        frame = labelled(spec, frame)
        if spec.window.max_rows_per_day:
            frame = cap_rows(frame, spec.entity_keys, spec.window.max_rows_per_day)
        y = target_values(frame, spec)
        scan.rows[ds] = len(frame)
        if ds in train_days:
            scan.classes.update(np.unique(y).tolist())
            for name in categorical:
                scan.categories[name].update(str(v) for v in frame[name].dropna().unique())
    return scan


def sample_day(frame: pd.DataFrame, rows: int, seed: int, ds: dt.date) -> pd.DataFrame:
    """``rows`` of a day's (canonically ordered) rows, uniformly at random from a stream seeded by the model's
    seed and the day: the same rows on every run, and a smaller quota (a longer window) keeps a subset of
    a larger one's. Not by entity-key hash like :func:`cap_rows`: hashing every key of a 1M-row day costs
    0.5-0.8 s, and the sample needs no key stability (it is redrawn from the window on each retrain)."""
    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    order = np.random.default_rng([seed, ds.toordinal()]).permutation(len(frame))
    return frame.iloc[np.sort(order[:rows])].reset_index(drop=True)


def sample_quota(rows: Mapping[dt.date, int], cap: int | None = None) -> dict[dt.date, int]:
    """Rows to keep per day: all of them when the days fit in ``cap``, else a share proportional to size."""
    cap = SAMPLE_MAX_ROWS if cap is None else cap
    total = sum(rows.values())
    if total <= cap:
        return dict(rows)
    return {ds: max(1, cap * n // total) for ds, n in rows.items()}


class _SpilledDays:
    """The prepared model matrix of one split's days, prepared once, spilled to ``directory`` in batches.

    XGBoost gets batches of at most ``BATCH_ROWS`` rows: its per-batch working copies stay small.
    """

    def __init__(self, spec: PipelineSpec, window: TrainingWindow, days: list[dt.date], schema: FeatureSchema,
                 directory: Path, rows: Mapping[dt.date, int], on_first_load: Any = None,
                 keep_labels: bool = False) -> None:
        self.spec, self.window, self.days, self.schema = spec, window, list(days), schema
        self.directory = directory
        self.on_first_load = on_first_load
        self.numeric = [c for c in schema.columns if schema.kinds[c] != "categorical"]
        self.categorical = [c for c in schema.columns if schema.kinds[c] == "categorical"]
        self.dtypes = {c: pd.CategoricalDtype(pd.Index(schema.xgboost_categories(c), dtype=object))
                       for c in self.categorical}
        self.expected = dict(rows)
        # (day index, first row, end row) of every batch, from the scan's row counts.
        self.batches = [(i, start, min(start + BATCH_ROWS, rows[ds]))
                        for i, ds in enumerate(self.days) for start in range(0, rows[ds], BATCH_ROWS)]
        self.rows = 0
        self.keep_labels = keep_labels  # float64 labels in memory (validation: for its metrics)
        self.labels: list[np.ndarray] = []

    def _paths(self, b: int) -> tuple[Path, Path, Path]:
        return (self.directory / f"{b:05d}-numeric.npy", self.directory / f"{b:05d}-codes.npy",
                self.directory / f"{b:05d}-label.npy")

    def _prepare(self, day: int) -> None:
        try:
            self._prepare_day(day)
        finally:
            release_memory()

    def _prepare_day(self, day: int) -> None:
        ds = self.days[day]
        frame = load_day(self.spec, ds, self.window)
        if len(frame) != self.expected[ds]:
            raise DataQualityError(f"{self.spec.name} ds={ds} changed while training read it "
                                   f"({self.expected[ds]} rows, then {len(frame)}); select the window again")
        y = target_values(frame, self.spec)
        matrix = xgboost_input(prepare_features(frame, self.schema), self.schema)
        numeric = np.empty((len(frame), len(self.numeric)), dtype=np.float32, order="F")
        for j, name in enumerate(self.numeric):
            numeric[:, j] = matrix[name].to_numpy()
        codes = np.empty((len(frame), len(self.categorical)), dtype=np.int32, order="F")
        for j, name in enumerate(self.categorical):
            codes[:, j] = matrix[name].cat.codes.to_numpy()
        del matrix
        for b, (i, start, end) in enumerate(self.batches):
            if i == day:
                num_path, codes_path, label_path = self._paths(b)
                np.save(num_path, np.asfortranarray(numeric[start:end]))
                np.save(codes_path, np.asfortranarray(codes[start:end]))
                np.save(label_path, y[start:end])
        self.rows += len(frame)
        if self.keep_labels:
            self.labels.append(y)
        if self.on_first_load is not None:
            self.on_first_load(ds, frame)

    def batch(self, b: int) -> tuple[pd.DataFrame, np.ndarray]:
        """Batch ``b`` as XGBoost input: numerics as float32 (what XGBoost stores), categoricals as Categorical."""
        num_path, codes_path, label_path = self._paths(b)
        if not label_path.exists():
            self._prepare(self.batches[b][0])
        numeric, codes, y = np.load(num_path), np.load(codes_path), np.load(label_path)
        columns: dict[str, Any] = {name: numeric[:, j] for j, name in enumerate(self.numeric)}
        for j, name in enumerate(self.categorical):
            columns[name] = pd.Categorical.from_codes(codes[:, j], dtype=self.dtypes[name])
        # copy=False: no consolidation copy; XGBoost reads the columns one by one anyway.
        return pd.DataFrame(columns, columns=list(self.schema.columns), copy=False), y

    def iterator(self) -> Any:
        import xgboost as xgb

        spilled = self

        class _Batches(xgb.DataIter):
            def __init__(self) -> None:
                self._b = 0
                super().__init__(release_data=True)

            def next(self, input_data: Any) -> bool:
                if self._b == len(spilled.batches):
                    return False
                X, y = spilled.batch(self._b)
                input_data(data=X, label=y)
                self._b += 1
                return True

            def reset(self) -> None:
                self._b = 0

        return _Batches()


@dataclass
class TrainingData:
    """What fitting needs: the XGBoost matrices and the small in-memory parts."""

    schema: FeatureSchema
    dtrain: Any
    dvalid: Any
    y_valid: np.ndarray
    sample: pd.DataFrame  # bounded deterministic sample of the training days (baseline, profile)
    valid_glimpse: pd.DataFrame  # a few validation rows (dataset logging)
    rows_train: int
    rows_valid: int


def stream_training_data(spec: PipelineSpec, window: TrainingWindow, spill: Path,
                          steps: StepTimer | None = None) -> TrainingData:
    """Training and validation matrices streamed partition by partition (bounded memory)."""
    import xgboost as xgb

    steps = steps or StepTimer()
    kinds = feature_kinds(spec)
    scan = _scan_days(spec, window, kinds)
    steps.mark("scan", days=len(scan.rows))
    if spec.task_type == TaskType.BINARY_CLASSIFICATION and len(scan.classes) < 2:
        raise DataQualityError(f"{spec.name}: the training days hold a single class; cannot train a classifier")
    schema = FeatureSchema(tuple(kinds), dict(kinds), {k: sorted(v) for k, v in scan.categories.items()},
                           spec.model.missing_values)
    quota = sample_quota({ds: scan.rows[ds] for ds in window.train_days})
    samples: list[pd.DataFrame] = []
    glimpse: list[pd.DataFrame] = []

    def keep_sample(ds: dt.date, frame: pd.DataFrame) -> None:
        samples.append(sample_day(frame, quota[ds], spec.model.seed, ds))

    def keep_glimpse(ds: dt.date, frame: pd.DataFrame) -> None:
        if not glimpse:
            glimpse.append(frame.head(DATASET_LOG_ROWS).copy())

    (spill / "train").mkdir()
    (spill / "validation").mkdir()
    train = _SpilledDays(spec, window, window.train_days, schema, spill / "train", scan.rows, keep_sample)
    valid = _SpilledDays(spec, window, window.validation_days, schema, spill / "validation", scan.rows,
                         keep_glimpse, keep_labels=True)
    dtrain = xgb.QuantileDMatrix(train.iterator(), enable_categorical=True)
    release_memory()
    steps.mark("train_matrix", rows=train.rows)
    dvalid = xgb.QuantileDMatrix(valid.iterator(), ref=dtrain, enable_categorical=True)
    release_memory()
    steps.mark("validation_matrix", rows=valid.rows)
    return TrainingData(
        schema=schema, dtrain=dtrain, dvalid=dvalid, y_valid=np.concatenate(valid.labels),
        sample=pd.concat(samples, ignore_index=True), valid_glimpse=glimpse[0] if glimpse else pd.DataFrame(),
        rows_train=train.rows, rows_valid=valid.rows,
    )


def in_memory_training_data(spec: PipelineSpec, window: TrainingWindow) -> TrainingData:
    """The reference path: concatenate the days in pandas, one QuantileDMatrix (memory ~ the window)."""
    import xgboost as xgb

    def load(days: list[dt.date]) -> list[pd.DataFrame]:
        return [load_day(spec, ds, window) for ds in days]

    train_frames = load(window.train_days)
    train = pd.concat(train_frames, ignore_index=True)
    valid = pd.concat(load(window.validation_days), ignore_index=True)
    y_train, y_valid = target_values(train, spec), target_values(valid, spec)
    if spec.task_type == TaskType.BINARY_CLASSIFICATION and len(np.unique(y_train)) < 2:
        raise DataQualityError(f"{spec.name}: the training days hold a single class; cannot train a classifier")
    schema = fit_feature_schema(train, feature_kinds(spec), missing=spec.model.missing_values)
    X_train = xgboost_input(prepare_features(train, schema), schema)
    X_valid = xgboost_input(prepare_features(valid, schema), schema)
    dtrain = xgb.QuantileDMatrix(X_train, label=y_train, enable_categorical=True)
    dvalid = xgb.QuantileDMatrix(X_valid, label=y_valid, ref=dtrain, enable_categorical=True)
    quota = sample_quota({ds: len(f) for ds, f in zip(window.train_days, train_frames, strict=True)})
    sample = pd.concat([sample_day(f, quota[ds], spec.model.seed, ds)
                        for ds, f in zip(window.train_days, train_frames, strict=True)], ignore_index=True)
    return TrainingData(
        schema=schema, dtrain=dtrain, dvalid=dvalid, y_valid=y_valid,
        sample=sample, valid_glimpse=valid.head(DATASET_LOG_ROWS), rows_train=len(train), rows_valid=len(valid),
    )
