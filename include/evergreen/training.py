"""Training: pick the data window, build features, train the XGBoost challenger and its baseline.

Everything the run depends on is pinned and logged: the window is a list of published partitions with
their manifest hashes (``data_digest``), the split is by day, row caps are hash-based and XGBoost runs
with a fixed seed and thread count, so the same inputs give the same metrics.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Generator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from evergreen import __version__, storage
from evergreen.errors import DataQualityError
from evergreen.evaluation import HOLDOUT_ARTIFACT, compute_metrics
from evergreen.features import add_time_features, sort_canonical
from evergreen.spec import FeatureType, PipelineSpec, TaskType

FEATURES_ZONE = "features"
PREDICTION_COLUMN = "prediction"
CODE_VERSION_ENV = "EVERGREEN_CODE_VERSION"
DEFAULT_NTHREAD = 4  # fixed, not cpu_count(): the thread count must not depend on the worker's size
MAX_TAG_VALUE = 5000

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ window


@dataclass(frozen=True)
class TrainingWindow:
    """The published partitions a training run uses and their time-ordered split (JSON via to_dict)."""

    spec: str
    as_of: dt.date
    start: dt.date
    partitions: list[dt.date]
    missing_days: list[dt.date]
    data_digest: str
    rows: int
    train_days: list[dt.date]
    validation_days: list[dt.date]
    holdout_days: list[dt.date]
    # ds -> manifest content_sha256: loading re-checks these so the digest describes what was read.
    content_hashes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("as_of", "start"):
            out[key] = out[key].isoformat()
        for key in ("partitions", "missing_days", "train_days", "validation_days", "holdout_days"):
            out[key] = [d.isoformat() for d in out[key]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingWindow:
        def days(key: str) -> list[dt.date]:
            return [dt.date.fromisoformat(d) for d in data[key]]

        return cls(
            spec=data["spec"],
            as_of=dt.date.fromisoformat(data["as_of"]),
            start=dt.date.fromisoformat(data["start"]),
            partitions=days("partitions"),
            missing_days=days("missing_days"),
            data_digest=data["data_digest"],
            rows=int(data["rows"]),
            train_days=days("train_days"),
            validation_days=days("validation_days"),
            holdout_days=days("holdout_days"),
            content_hashes=dict(data.get("content_hashes", {})),
        )

    @property
    def partitions_summary(self) -> str:
        """Compact form for tags: ``first..last (n days)``."""
        if not self.partitions:
            return "(none)"
        return f"{self.partitions[0]}..{self.partitions[-1]} ({len(self.partitions)} days)"


def data_digest(pairs: Mapping[str, str]) -> str:
    """sha256 over the sorted ``(ds, content_sha256)`` pairs."""
    return storage.sha256_bytes(storage.canonical_json(sorted([ds, sha] for ds, sha in pairs.items())))


def select_window(spec: PipelineSpec, as_of: dt.date, window_days: int | None = None) -> TrainingWindow:
    """Choose the published partitions in ``(as_of - days, as_of]`` and split them by day (manifests only).

    Days before the pipeline's history starts (``schedule.start_date`` or the first partition, whichever
    is earlier) are not counted as missing, so a young pipeline can train once it has ``min_days``.
    """
    cfg = spec.window
    days = window_days if window_days is not None else cfg.days
    if days < 1:
        raise ValueError(f"window_days must be positive, got {days}")
    start = as_of - dt.timedelta(days=days - 1)
    found = storage.list_partitions(FEATURES_ZONE, spec.name)
    # Never look past as_of: a backfill for an old date must not see data from its future.
    in_window = {ds: path for ds, path in found.items() if start <= ds <= as_of}

    hashes: dict[str, str] = {}
    rows_by_day: dict[dt.date, int] = {}
    for ds, path in sorted(in_window.items()):
        manifest = storage.read_manifest(path)
        if manifest is None:  # unpublished between listing and reading
            continue
        hashes[ds.isoformat()] = str(manifest["content_sha256"])
        rows = int(manifest["rows"])
        rows_by_day[ds] = min(rows, cfg.max_rows_per_day) if cfg.max_rows_per_day else rows
    present = sorted(rows_by_day)

    history_start = min([spec.schedule.start_date, *present[:1]])
    expected_from = max(start, history_start)
    missing = [
        expected_from + dt.timedelta(days=i)
        for i in range((as_of - expected_from).days + 1)
        if expected_from + dt.timedelta(days=i) not in rows_by_day
    ]
    rows = sum(rows_by_day.values())
    where = f"{spec.name} window {start}..{as_of}"
    if len(present) < cfg.min_days:
        raise DataQualityError(f"{where}: {len(present)} published feature partitions, need at least {cfg.min_days}")
    if len(missing) > cfg.max_missing_days:
        shown = ", ".join(d.isoformat() for d in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataQualityError(
            f"{where}: {len(missing)} days missing (max_missing_days={cfg.max_missing_days}): {shown}"
        )
    if rows < cfg.min_rows:
        raise DataQualityError(f"{where}: {rows} rows in {len(present)} partitions, need at least {cfg.min_rows}")

    holdout = present[-cfg.holdout_days:]
    validation = present[-(cfg.holdout_days + cfg.validation_days):-cfg.holdout_days]
    train = present[: -(cfg.holdout_days + cfg.validation_days)]
    return TrainingWindow(
        spec=spec.name,
        as_of=as_of,
        start=start,
        partitions=present,
        missing_days=missing,
        data_digest=data_digest(hashes),
        rows=rows,
        train_days=train,
        validation_days=validation,
        holdout_days=holdout,
        content_hashes=hashes,
    )


def _cap_rows(frame: pd.DataFrame, keys: list[str], cap: int) -> pd.DataFrame:
    """Keep the ``cap`` rows with the smallest entity-key hash: deterministic, unbiased, no RNG state."""
    if len(frame) <= cap:
        return frame
    key_hash = pd.util.hash_pandas_object(frame[keys].astype("str"), index=False).to_numpy()
    keep = np.sort(np.argsort(key_hash, kind="stable")[:cap])
    return frame.iloc[keep]


def _read_published(spec: PipelineSpec, ds: dt.date, expected_sha: str | None,
                    columns: list[str] | None = None) -> pd.DataFrame:
    """The files a partition's manifest lists, hashes verified; only ``columns`` (those present) if given."""
    import io

    import pyarrow.parquet as pq

    directory = storage.partition_dir(FEATURES_ZONE, spec.name, ds)
    manifest = storage.read_manifest(directory)
    if manifest is None:
        raise DataQualityError(f"{spec.name} feature partition ds={ds} is not published")
    if expected_sha is not None and manifest["content_sha256"] != expected_sha:
        raise DataQualityError(
            f"{spec.name} ds={ds} was republished after the window was selected "
            f"({expected_sha[:12]} -> {str(manifest['content_sha256'])[:12]}); select the window again"
        )
    frames = []
    for entry in manifest["files"]:
        try:
            data = (directory / entry["name"]).read_bytes()
        except FileNotFoundError as exc:  # republished (old files dropped) while we were reading
            raise DataQualityError(f"{spec.name} ds={ds}: {exc}") from exc
        if storage.sha256_bytes(data) != entry["sha256"]:
            raise DataQualityError(f"{directory / entry['name']} does not match its manifest hash")
        wanted = None
        if columns is not None:
            present = set(pq.read_schema(io.BytesIO(data)).names)
            wanted = [c for c in columns if c in present]
        frames.append(pd.read_parquet(io.BytesIO(data), columns=wanted))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _training_columns(spec: PipelineSpec) -> list[str]:
    return [*spec.entity_keys, spec.timestamp_column, *spec.model_features, spec.target.name]


def load_day(spec: PipelineSpec, ds: dt.date, expected_sha: str | None = None) -> pd.DataFrame:
    """One published partition with the columns training needs, file hashes verified, capped if configured."""
    frame = add_time_features(_read_published(spec, ds, expected_sha), spec, overwrite=False)
    wanted = _training_columns(spec)
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        raise DataQualityError(f"{spec.name} ds={ds} lacks columns {absent}")
    frame = frame[wanted]
    if spec.window.max_rows_per_day:
        frame = _cap_rows(frame, spec.entity_keys, spec.window.max_rows_per_day)
    return sort_canonical(frame, spec)


def load_window_frames(spec: PipelineSpec, window: TrainingWindow) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, holdout) frames of the window's partitions, verified against its hashes.

    Holds the whole window in memory: training streams it instead (see ``train_challenger``).
    """

    def load(days: list[dt.date]) -> pd.DataFrame:
        frames = [load_day(spec, ds, window.content_hashes.get(ds.isoformat())) for ds in days]
        return pd.concat(frames, ignore_index=True)

    return load(window.train_days), load(window.validation_days), load(window.holdout_days)


# ------------------------------------------------------------------------------- feature matrix
# The code below is pickled *by value* into the pyfunc model (see _pickle_by_value), so it must only
# use numpy/pandas/xgboost/mlflow: the model then loads where neither Airflow nor evergreen is installed.


@dataclass(frozen=True)
class FeatureSchema:
    """Model columns in order, their kind and the category list fixed from the training data."""

    columns: tuple[str, ...]
    kinds: dict[str, str]
    categories: dict[str, list[str]]
    missing: str = "native"  # ModelSpec.missing_values; models saved before it existed used NaN

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "kinds": dict(self.kinds), "categories": dict(self.categories),
                "missing": self.missing}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        return cls(tuple(data["columns"]), dict(data["kinds"]), {k: list(v) for k, v in data["categories"].items()},
                   data.get("missing", "native"))

    def xgboost_categories(self, name: str) -> list[str]:
        """The categories XGBoost is given for ``name``: the training ones, plus the missing one if encoded."""
        extra = [MISSING_CATEGORY] if self.missing == "sentinel" else []
        return [*self.categories[name], *extra]


MISSING_VALUE = -1e30  # float32-representable and below any real feature value
MISSING_CATEGORY = "__missing__"


def xgboost_input(matrix: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The model matrix as XGBoost sees it: with ``schema.missing == "sentinel"`` missing numerics become
    ``MISSING_VALUE`` and missing or unseen categories ``MISSING_CATEGORY``, so the matrix is dense."""
    if schema.missing != "sentinel":
        return matrix
    out: dict[str, Any] = {}
    for name in schema.columns:
        values = matrix[name]
        if schema.kinds[name] == "categorical":
            codes = values.cat.codes.to_numpy().copy()
            codes[codes < 0] = len(schema.categories[name])
            dtype = pd.CategoricalDtype(pd.Index(schema.xgboost_categories(name), dtype=object))
            out[name] = pd.Categorical.from_codes(codes, dtype=dtype)
        else:
            array = values.to_numpy(dtype="float64", copy=True)
            array[np.isnan(array)] = MISSING_VALUE
            out[name] = array
    return pd.DataFrame(out, index=matrix.index)


def _as_float(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values):
        values = values.astype("Float64")
    elif not pd.api.types.is_numeric_dtype(values):
        # Booleans that arrive as text (CSV, JSON requests): map the usual spellings, anything else is NaN.
        text = values.astype("object").map(lambda v: str(v).strip().lower() if v is not None else v)
        mapped = text.map({"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0})
        return mapped.to_numpy(dtype="float64", na_value=np.nan)
    numeric = pd.to_numeric(values, errors="coerce")
    return np.asarray(numeric.to_numpy(dtype="float64", na_value=np.nan), dtype="float64")


def _as_category(values: pd.Series, categories: list[str]) -> pd.Categorical:
    if isinstance(values.dtype, pd.StringDtype):
        # Text already (what the feature ETL writes): a hash lookup, no per-value str() round trip.
        # Values outside the training categories and missing values both become NaN codes.
        return pd.Categorical(values, categories=pd.Index(categories, dtype=object))
    text = values.astype("object").map(str).where(values.notna(), None)
    # Values outside the training categories become NaN: the model treats them like missing.
    text = text.where(text.isin(categories), None)
    return pd.Categorical(text.to_numpy(dtype=object), categories=pd.Index(categories, dtype=object))


def fit_feature_schema(frame: pd.DataFrame, features: Mapping[str, str], missing: str = "native") -> FeatureSchema:
    """Fix column order and the sorted category list of each categorical from (training) data."""
    categories: dict[str, list[str]] = {}
    for name, kind in features.items():
        if kind == "categorical":
            values = frame[name]
            categories[name] = sorted({str(v) for v in values[values.notna()].astype("object")})
    return FeatureSchema(tuple(features), {k: str(v) for k, v in features.items()}, categories, missing)


def prepare_features(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Model matrix: numerics and booleans as float64, categoricals as pandas Categorical (fixed categories)."""
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        raise KeyError(f"input lacks model features {missing}")
    out: dict[str, Any] = {}
    for name in schema.columns:
        if schema.kinds[name] == "categorical":
            out[name] = _as_category(frame[name], schema.categories[name])
        else:
            out[name] = _as_float(frame[name])
    return pd.DataFrame(out, index=frame.index)


class EvergreenXGBModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: raw feature-partition columns in, P(y=1) or regression values out."""

    def load_context(self, context: Any) -> None:
        import xgboost as xgb

        self._booster = xgb.Booster()
        self._booster.load_model(context.artifacts["booster"])
        with open(context.artifacts["feature_schema"], encoding="utf-8") as fh:
            self._schema = FeatureSchema.from_dict(json.load(fh))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        import xgboost as xgb

        matrix = xgboost_input(prepare_features(pd.DataFrame(model_input), self._schema), self._schema)
        return self._booster.predict(xgb.DMatrix(matrix, enable_categorical=True)).astype("float64")


@contextlib.contextmanager
def _pickle_by_value() -> Generator[None, None, None]:
    """Let cloudpickle embed this module's model code in the model artifact instead of a reference."""
    import sys

    import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


# ------------------------------------------------------------------------------------- training


def _feature_kinds(spec: PipelineSpec) -> dict[str, str]:
    return {name: FeatureType(kind).value for name, kind in spec.model_features.items()}


def xgb_params(spec: PipelineSpec) -> dict[str, Any]:
    """XGBoost parameters: task defaults, then the spec's params, then the determinism settings."""
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        # logloss last: xgboost early-stops on the last eval metric, and a proper score beats AUC there.
        base: dict[str, Any] = {"objective": "binary:logistic", "eval_metric": ["auc", "logloss"]}
    else:
        base = {"objective": "reg:squarederror", "eval_metric": ["rmse"]}
    params = {**base, "tree_method": "hist", "nthread": DEFAULT_NTHREAD, **spec.model.params}
    params["seed"] = spec.model.seed
    params["tree_method"] = "hist"  # QuantileDMatrix needs hist
    return params


def _baseline_pipeline(spec: PipelineSpec, schema: FeatureSchema) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in schema.columns if schema.kinds[c] != "categorical"]
    categorical = [c for c in schema.columns if schema.kinds[c] == "categorical"]
    transformers = []
    if numeric:
        transformers.append(("num", Pipeline([
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]), numeric))
    if categorical:
        transformers.append(("cat", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]), categorical))
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        estimator: Any = LogisticRegression(max_iter=2000)
    else:
        estimator = Ridge(alpha=1.0)
    return Pipeline([("features", ColumnTransformer(transformers)), ("model", estimator)])


def _baseline_input(matrix: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Categoricals as object columns with NaN: what SimpleImputer/OneHotEncoder handle everywhere."""
    out = matrix.copy()
    for name in schema.columns:
        if schema.kinds[name] == "categorical":
            out[name] = np.asarray(matrix[name].astype(object).where(matrix[name].notna(), np.nan), dtype=object)
    return out


def _baseline_predict(model: Any, X: pd.DataFrame, task_type: TaskType) -> np.ndarray:
    if task_type == TaskType.BINARY_CLASSIFICATION:
        return model.predict_proba(X)[:, 1]
    return model.predict(X)


def _labels(frame: pd.DataFrame, spec: PipelineSpec) -> np.ndarray:
    y = pd.to_numeric(frame[spec.target.name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    if np.isnan(y).any():
        raise DataQualityError(f"{spec.name}: target {spec.target.name!r} has missing values")
    if spec.task_type == TaskType.BINARY_CLASSIFICATION and not np.isin(y, [0.0, 1.0]).all():
        raise DataQualityError(f"{spec.name}: binary target {spec.target.name!r} has values other than 0/1")
    return y


# ------------------------------------------------------------------------------ streamed window
# The window is never held in pandas: XGBoost reads the training (and validation) days one partition at
# a time through a DataIter into a QuantileDMatrix (bin indices, not raw values). XGBoost walks an
# iterator several times (shape, sketch, index), so the first walk spills each day's prepared matrix
# (float32, exactly what XGBoost stores anyway, and category codes) to a temporary folder and later walks
# reload it instead of re-reading and re-preparing Parquet. The linear baseline and the reference profile
# use a bounded, hash-based sample of the training days; the holdout (a few days) stays in memory.

SAMPLE_MAX_ROWS = 200_000  # training rows the baseline and the reference profile see, at most
DATASET_LOG_ROWS = 1_000  # rows per split handed to mlflow.data (schema + a glimpse), not the whole split
PLOT_MAX_POINTS = 200_000
BATCH_ROWS = 262_144  # rows per batch handed to XGBoost (a day is split into several)
SPILL_DIR_ENV = "EVERGREEN_TRAINING_SPILL_DIR"  # where the per-day matrices go (default: the temp dir)


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


def _release_memory(collect: bool = False) -> None:
    """Hand freed memory back to the OS (Arrow's pool and glibc keep it otherwise) between big steps."""
    if collect:  # a full collection costs ~0.2 s with Airflow and MLflow loaded: only between big steps
        import gc

        gc.collect()
    with contextlib.suppress(Exception):
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Steps:
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
        frame = _read_published(spec, ds, window.content_hashes.get(ds.isoformat()), columns)
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise DataQualityError(f"{spec.name} ds={ds} lacks columns {absent}")
        if spec.window.max_rows_per_day:
            frame = _cap_rows(frame, spec.entity_keys, spec.window.max_rows_per_day)
        y = _labels(frame, spec)
        scan.rows[ds] = len(frame)
        if ds in train_days:
            scan.classes.update(np.unique(y).tolist())
            for name in categorical:
                scan.categories[name].update(str(v) for v in frame[name].dropna().unique())
    return scan


def _sample_quota(rows: Mapping[dt.date, int], cap: int | None = None) -> dict[dt.date, int]:
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
            _release_memory()

    def _prepare_day(self, day: int) -> None:
        ds = self.days[day]
        frame = load_day(self.spec, ds, self.window.content_hashes.get(ds.isoformat()))
        if len(frame) != self.expected[ds]:
            raise DataQualityError(f"{self.spec.name} ds={ds} changed while training read it "
                                   f"({self.expected[ds]} rows, then {len(frame)}); select the window again")
        y = _labels(frame, self.spec)
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
class _TrainingData:
    """What fitting needs: the XGBoost matrices and the small in-memory parts."""

    schema: FeatureSchema
    dtrain: Any
    dvalid: Any
    y_valid: np.ndarray
    sample: pd.DataFrame  # bounded deterministic sample of the training days (baseline, profile)
    valid_glimpse: pd.DataFrame  # a few validation rows (dataset logging)
    rows_train: int
    rows_valid: int


def _stream_training_data(spec: PipelineSpec, window: TrainingWindow, spill: Path,
                          steps: _Steps | None = None) -> _TrainingData:
    """Training and validation matrices streamed partition by partition (bounded memory)."""
    import xgboost as xgb

    steps = steps or _Steps()
    kinds = _feature_kinds(spec)
    scan = _scan_days(spec, window, kinds)
    steps.mark("scan", days=len(scan.rows))
    if spec.task_type == TaskType.BINARY_CLASSIFICATION and len(scan.classes) < 2:
        raise DataQualityError(f"{spec.name}: the training days hold a single class; cannot train a classifier")
    schema = FeatureSchema(tuple(kinds), dict(kinds), {k: sorted(v) for k, v in scan.categories.items()},
                           spec.model.missing_values)
    quota = _sample_quota({ds: scan.rows[ds] for ds in window.train_days})
    samples: list[pd.DataFrame] = []
    glimpse: list[pd.DataFrame] = []

    def keep_sample(ds: dt.date, frame: pd.DataFrame) -> None:
        samples.append(_cap_rows(frame, spec.entity_keys, quota[ds]).reset_index(drop=True))

    def keep_glimpse(ds: dt.date, frame: pd.DataFrame) -> None:
        if not glimpse:
            glimpse.append(frame.head(DATASET_LOG_ROWS).copy())

    (spill / "train").mkdir()
    (spill / "validation").mkdir()
    train = _SpilledDays(spec, window, window.train_days, schema, spill / "train", scan.rows, keep_sample)
    valid = _SpilledDays(spec, window, window.validation_days, schema, spill / "validation", scan.rows,
                         keep_glimpse, keep_labels=True)
    dtrain = xgb.QuantileDMatrix(train.iterator(), enable_categorical=True)
    _release_memory(collect=True)
    steps.mark("train_matrix", rows=train.rows)
    dvalid = xgb.QuantileDMatrix(valid.iterator(), ref=dtrain, enable_categorical=True)
    _release_memory(collect=True)
    steps.mark("validation_matrix", rows=valid.rows)
    return _TrainingData(
        schema=schema, dtrain=dtrain, dvalid=dvalid, y_valid=np.concatenate(valid.labels),
        sample=pd.concat(samples, ignore_index=True), valid_glimpse=glimpse[0] if glimpse else pd.DataFrame(),
        rows_train=train.rows, rows_valid=valid.rows,
    )


def _in_memory_training_data(spec: PipelineSpec, window: TrainingWindow) -> _TrainingData:
    """The reference path: concatenate the days in pandas, one QuantileDMatrix (memory ~ the window)."""
    import xgboost as xgb

    def load(days: list[dt.date]) -> list[pd.DataFrame]:
        return [load_day(spec, ds, window.content_hashes.get(ds.isoformat())) for ds in days]

    train_frames = load(window.train_days)
    train = pd.concat(train_frames, ignore_index=True)
    valid = pd.concat(load(window.validation_days), ignore_index=True)
    y_train, y_valid = _labels(train, spec), _labels(valid, spec)
    if spec.task_type == TaskType.BINARY_CLASSIFICATION and len(np.unique(y_train)) < 2:
        raise DataQualityError(f"{spec.name}: the training days hold a single class; cannot train a classifier")
    schema = fit_feature_schema(train, _feature_kinds(spec), missing=spec.model.missing_values)
    X_train = xgboost_input(prepare_features(train, schema), schema)
    X_valid = xgboost_input(prepare_features(valid, schema), schema)
    dtrain = xgb.QuantileDMatrix(X_train, label=y_train, enable_categorical=True)
    dvalid = xgb.QuantileDMatrix(X_valid, label=y_valid, ref=dtrain, enable_categorical=True)
    quota = _sample_quota({ds: len(f) for ds, f in zip(window.train_days, train_frames, strict=True)})
    sample = pd.concat([_cap_rows(f, spec.entity_keys, quota[ds]).reset_index(drop=True)
                        for ds, f in zip(window.train_days, train_frames, strict=True)], ignore_index=True)
    return _TrainingData(
        schema=schema, dtrain=dtrain, dvalid=dvalid, y_valid=y_valid,
        sample=sample, valid_glimpse=valid.head(DATASET_LOG_ROWS), rows_train=len(train), rows_valid=len(valid),
    )


def _plot_subset(n: int) -> np.ndarray | slice:
    """Evenly spaced positions (deterministic) when there are more points than a plot needs."""
    if n <= PLOT_MAX_POINTS:
        return slice(None)
    return np.linspace(0, n - 1, PLOT_MAX_POINTS).astype(np.int64)


def code_version() -> str:
    """Package version, plus the git sha from ``EVERGREEN_CODE_VERSION`` when the deployment sets it."""
    extra = os.environ.get(CODE_VERSION_ENV, "").strip()
    return f"{__version__}+{extra}" if extra else __version__


ARTIFACT_ROOT_ENV = "EVERGREEN_MLFLOW_ARTIFACT_ROOT"


def ensure_experiment(name: str) -> str:
    """The experiment id for ``name``, created if missing (tolerating a concurrent creator)."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Without a tracking server, MLflow would put artifacts in ./mlruns of whatever the cwd is.
    artifact_root = os.environ.get(ARTIFACT_ROOT_ENV, "").rstrip("/")
    try:
        return mlflow.create_experiment(name, artifact_location=f"{artifact_root}/{name}" if artifact_root else None)
    except MlflowException:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _lineage_tags(lineage: Mapping[str, Any]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key, value in lineage.items():
        name = key if key.startswith("evergreen.") else f"evergreen.{key}"
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        tags[name] = text[:MAX_TAG_VALUE]
    return tags


def _split_digest(window: TrainingWindow, days: list[dt.date]) -> str:
    return data_digest({d.isoformat(): window.content_hashes.get(d.isoformat(), "") for d in days})


def _log_dataset(spec: PipelineSpec, window: TrainingWindow, frame: pd.DataFrame, days: list[dt.date],
                 context: str, rows: int | None = None) -> None:
    """Log a split as an MLflow dataset input whose source lists the partition URIs it came from.

    ``frame`` only gives the schema (and a glimpse): pass a few rows, and the split's size as ``rows``.
    """
    from mlflow.data.dataset_source import DatasetSource

    uris = [str(storage.partition_dir(FEATURES_ZONE, spec.name, d)) for d in days]
    digest = _split_digest(window, days)

    class _Partitions(DatasetSource):
        # Not registered with MLflow: it only has to describe where the rows came from.
        @staticmethod
        def _get_source_type() -> str:
            return "evergreen_partitions"

        def load(self) -> Any:
            raise NotImplementedError("read the partitions with evergreen.training.load_day")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> Any:
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return {"uri": str(storage.storage_root() / FEATURES_ZONE / spec.name), "partitions": uris}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> Any:
            return cls()

    with warnings.catch_warnings():
        # Schema inference hints (int target, tz-aware timestamps) are noise for a logged-only dataset.
        warnings.simplefilter("ignore")
        dataset = mlflow.data.from_pandas(
            frame, source=_Partitions(), targets=spec.target.name, name=f"{spec.name}-{context}",
            digest=digest[:32],  # MLflow caps dataset digests at 36 characters
        )
        first_last = f"{days[0]}..{days[-1]}" if days else "(none)"
        mlflow.log_input(dataset, context=context,
                         tags={"evergreen.partitions": f"{first_last} ({len(days)} days)",
                               "evergreen.digest": digest,
                               "evergreen.rows": str(len(frame) if rows is None else rows)})


def _plot_importance(booster: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gain = booster.get_score(importance_type="gain")
    items = sorted(gain.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("total gain")
    ax.set_title("XGBoost feature importance (gain)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_performance(task_type: TaskType, y: np.ndarray, pred: np.ndarray, baseline: np.ndarray,
                      path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    if task_type == TaskType.BINARY_CLASSIFICATION and len(np.unique(y)) == 2:
        for label, scores in (("challenger", pred), ("baseline", baseline)):
            fpr, tpr, _ = roc_curve(y, scores)
            precision, recall, _ = precision_recall_curve(y, scores)
            axes[0].plot(fpr, tpr, label=label)
            axes[1].plot(recall, precision, label=label)
        axes[0].plot([0, 1], [0, 1], "k--", linewidth=0.8)
        axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (holdout)")
        axes[1].set(xlabel="recall", ylabel="precision", title="Precision-recall (holdout)")
        for ax in axes:
            ax.legend()
    else:
        residuals = y - pred
        axes[0].scatter(pred, residuals, s=4, alpha=0.4)
        axes[0].axhline(0.0, color="k", linewidth=0.8)
        axes[0].set(xlabel="prediction", ylabel="residual", title="Residuals vs prediction (holdout)")
        axes[1].hist(residuals, bins=40)
        axes[1].set(xlabel="residual", title="Residual distribution (holdout)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def model_signature(spec: PipelineSpec) -> Any:
    """Explicit signature from the spec (not inferred from a sample, which would guess optionality).

    MLflow's enforcement accepts missing values in double and string columns, not in boolean ones.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    mlflow_type = {FeatureType.NUMERIC: "double", FeatureType.CATEGORICAL: "string", FeatureType.BOOLEAN: "boolean"}
    inputs = Schema([ColSpec(mlflow_type[kind], name) for name, kind in spec.model_features.items()])
    outputs = Schema([TensorSpec(np.dtype("float64"), (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _pip_requirements() -> list[str]:
    """Pinned to what trained the model; listed explicitly because inferring them costs seconds."""
    import cloudpickle
    import sklearn
    import xgboost as xgb

    return [
        f"mlflow=={mlflow.__version__}",
        f"xgboost=={xgb.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        f"cloudpickle=={cloudpickle.__version__}",
        f"scikit-learn=={sklearn.__version__}",
    ]


def _load_holdout(spec: PipelineSpec, window: TrainingWindow) -> list[pd.DataFrame]:
    return [load_day(spec, ds, window.content_hashes.get(ds.isoformat())) for ds in window.holdout_days]


def train_challenger(spec: PipelineSpec, window: TrainingWindow, *, lineage: Mapping[str, Any],
                     streaming: bool = True) -> dict[str, Any]:
    """Train the XGBoost challenger and the linear baseline on ``window``; log both to MLflow.

    ``streaming`` (default) feeds XGBoost one partition at a time, so memory does not grow with the window;
    ``streaming=False`` concatenates the days in pandas first (the reference path: same model, more memory).
    The baseline and the reference profile use at most ``SAMPLE_MAX_ROWS`` training rows (hash-sampled).

    Returns ``{run_id, baseline_run_id, model_uri, metrics, baseline_metrics, validation_metrics,
    best_iteration, data_digest, as_of, experiment_id}`` (JSON-safe; metrics are on the holdout days).
    """
    import xgboost as xgb

    from evergreen.drift import build_reference_profile

    if window.spec != spec.name:
        raise ValueError(f"window is for spec {window.spec!r}, not {spec.name!r}")
    params = xgb_params(spec)
    steps = _Steps()
    with contextlib.ExitStack() as stack:
        if streaming:
            base = os.environ.get(SPILL_DIR_ENV) or None
            spill = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evergreen-train-", dir=base)))
            data = _stream_training_data(spec, window, spill, steps)
        else:
            data = _in_memory_training_data(spec, window)
            steps.mark("load_in_memory")
        booster = xgb.train(
            params, data.dtrain, num_boost_round=spec.model.num_boost_round, evals=[(data.dvalid, "validation")],
            early_stopping_rounds=spec.model.early_stopping_rounds, verbose_eval=False,
        )
        best_iteration = int(booster.best_iteration)
        booster = booster[: best_iteration + 1]  # keep only the trees up to the early-stopping optimum
        steps.mark("fit", best_iteration=best_iteration)
        # Scored on the quantised matrix (splits fall on its bin edges, so the predictions are the same as on
        # the raw values): no second pass over the validation data.
        valid_pred = booster.predict(data.dvalid)
        data.dtrain = data.dvalid = None  # the quantised matrices are the biggest thing alive: free them now
        _release_memory(collect=True)
    validation_metrics = compute_metrics(spec.task_type, data.y_valid, valid_pred)
    schema, sample, glimpse = data.schema, data.sample, data.valid_glimpse
    rows_train, rows_valid = data.rows_train, data.rows_valid
    del valid_pred, data
    steps.mark("validation_scores")

    baseline = _baseline_pipeline(spec, schema)
    baseline.fit(_baseline_input(prepare_features(sample, schema), schema), _labels(sample, spec))
    steps.mark("baseline", rows=len(sample))

    # The holdout (a few days) stays in memory; it is scored one day at a time.
    holdout_days = _load_holdout(spec, window)
    holdout_parts, baseline_parts = [], []
    for day in holdout_days:
        X_day = prepare_features(day, schema)
        holdout_parts.append(booster.predict(xgb.DMatrix(xgboost_input(X_day, schema), enable_categorical=True)))
        baseline_parts.append(_baseline_predict(baseline, _baseline_input(X_day, schema), spec.task_type))
    holdout = pd.concat(holdout_days, ignore_index=True)
    del holdout_days
    y_holdout = _labels(holdout, spec)
    holdout_pred = np.concatenate(holdout_parts)
    baseline_pred = np.concatenate(baseline_parts)
    metrics = compute_metrics(spec.task_type, y_holdout, holdout_pred)
    baseline_metrics = compute_metrics(spec.task_type, y_holdout, baseline_pred)
    steps.mark("holdout", rows=len(holdout))

    experiment_id = ensure_experiment(spec.name)
    common_tags = {
        "evergreen.spec": spec.name,
        "evergreen.as_of": window.as_of.isoformat(),
        "evergreen.data_digest": window.data_digest,
        "evergreen.partitions": window.partitions_summary,
        "evergreen.code_version": code_version(),
        **_lineage_tags(lineage),
    }
    window_params = {
        "window.days": (window.as_of - window.start).days + 1,
        "window.holdout_days": spec.window.holdout_days,
        "window.validation_days": spec.window.validation_days,
        "window.max_rows_per_day": spec.window.max_rows_per_day,
        "rows.train": rows_train, "rows.validation": rows_valid, "rows.holdout": len(holdout),
        "rows.baseline_sample": len(sample),
        "training.streaming": streaming,
    }
    feature_names = list(schema.columns)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{spec.name}-{window.as_of}-challenger",
                              tags={**common_tags, "evergreen.role": "challenger"}) as run:
            run_id = run.info.run_id
            with mlflow.start_run(experiment_id=experiment_id, nested=True,
                                  run_name=f"{spec.name}-{window.as_of}-baseline",
                                  tags={**common_tags, "evergreen.role": "baseline",
                                        "evergreen.challenger_run_id": run_id}) as baseline_run:
                baseline_run_id = baseline_run.info.run_id
                mlflow.log_params({**window_params, "model.kind": type(baseline[-1]).__name__})
                mlflow.log_metrics(baseline_metrics)

            mlflow.log_params({
                **window_params,
                **{f"xgb.{k}": v for k, v in params.items()},
                "num_boost_round": spec.model.num_boost_round,
                "early_stopping_rounds": spec.model.early_stopping_rounds,
                "features": ",".join(feature_names),
            })
            mlflow.log_metrics({**metrics, **{f"validation_{k}": v for k, v in validation_metrics.items()},
                                "best_iteration": best_iteration})
            # Datasets: the schema and a glimpse of each split (the rows themselves are the partitions).
            for frame, rows, days, context in ((sample, rows_train, window.train_days, "train"),
                                               (glimpse, rows_valid, window.validation_days, "validation"),
                                               (holdout, len(holdout), window.holdout_days, "holdout")):
                _log_dataset(spec, window, frame.head(DATASET_LOG_ROWS), days, context, rows=rows)
            mlflow.log_dict(window.to_dict(), "window.json")
            mlflow.log_dict(schema.to_dict(), "feature_schema.json")

            _plot_importance(booster, tmp / "feature_importance.png")
            shown = _plot_subset(len(y_holdout))
            _plot_performance(spec.task_type, y_holdout[shown], holdout_pred[shown], baseline_pred[shown],
                              tmp / "holdout_performance.png")
            mlflow.log_artifact(str(tmp / "feature_importance.png"), "plots")
            mlflow.log_artifact(str(tmp / "holdout_performance.png"), "plots")

            # The holdout (with the challenger's scores) lets evaluation re-score any model on identical rows.
            holdout[PREDICTION_COLUMN] = holdout_pred
            holdout_path = tmp / Path(HOLDOUT_ARTIFACT).name
            holdout_path.write_bytes(storage.frame_to_parquet_bytes(holdout))
            mlflow.log_artifact(str(holdout_path), str(Path(HOLDOUT_ARTIFACT).parent))
            holdout_path.unlink()

            # Reference features come from (a bounded sample of) the training days; reference scores from the
            # holdout, because live scores are out-of-sample too (in-sample scores are sharper and would fake
            # drift). The scores part depends on the scores only, so an empty frame stands in for the holdout.
            profile = build_reference_profile(sample, spec, scores=None, seed=spec.model.seed)
            profile["scores"] = build_reference_profile(holdout.iloc[:0], spec, scores=holdout_pred,
                                                        seed=spec.model.seed)["scores"]
            profile["scores_source"] = "holdout"
            profile["sampled_from_rows"] = rows_train
            mlflow.log_dict(profile, "reference_profile.json")

            booster_path = tmp / "model.ubj"
            booster.save_model(str(booster_path))
            schema_path = tmp / "feature_schema.json"
            schema_path.write_text(json.dumps(schema.to_dict(), sort_keys=True), encoding="utf-8")
            example = holdout[feature_names].head(5).reset_index(drop=True)
            signature = model_signature(spec)
            with _pickle_by_value():
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=EvergreenXGBModel(),
                    artifacts={"booster": str(booster_path), "feature_schema": str(schema_path)},
                    signature=signature,
                    input_example=example,
                    pip_requirements=_pip_requirements(),
                    metadata={"evergreen.spec": spec.name, "evergreen.data_digest": window.data_digest},
                )
            model_uri = info.model_uri
            mlflow.set_tags({"evergreen.model_uri": model_uri, "evergreen.baseline_run_id": baseline_run_id})
            steps.mark("mlflow_logging")
            mlflow.log_dict(steps.to_dict(), "training_steps.json")

    return {
        "run_id": run_id,
        "baseline_run_id": baseline_run_id,
        "model_uri": model_uri,
        "experiment_id": experiment_id,
        "metrics": metrics,
        "baseline_metrics": baseline_metrics,
        "validation_metrics": validation_metrics,
        "best_iteration": best_iteration,
        "data_digest": window.data_digest,
        "as_of": window.as_of.isoformat(),
    }
