"""Feature ETL: raw daily data -> validated, typed, date-partitioned feature tables.

Each function is one step of the ``<spec>_feature_etl`` DAG and returns a small JSON-safe reference:

1. ``raw_partition_ready``      is the day's raw data there?
2. ``validate_raw_partition``   the gate (GX decides any day the screen does not pass); on failure quarantine and raise
3. ``build_feature_partition``  typed features staged in the partition (invisible until published)
4. ``publish_feature_partition`` manifest last: the partition now exists
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from typing import TYPE_CHECKING, Any

from evergreen import __version__, layout, storage
from evergreen.errors import DataQualityError, MissingDataError
from evergreen.etl.features import add_time_features, sort_canonical
from evergreen.etl.validation import partition_bounds, validate_frame
from evergreen.spec import FeatureType, PipelineSpec, TaskType

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

# Bump when the feature table layout changes: readers can tell old partitions apart.
FEATURE_SCHEMA_VERSION = 1


def raw_locations(spec: PipelineSpec, ds: dt.date) -> list[ObjectStoragePath]:
    """The raw file(s) holding day ``ds`` (a daily file or glob, or the one historical file)."""
    source = spec.source
    location = source.path.format(ds=ds.isoformat()) if source.kind == "daily_files" else source.path
    if "*" not in location:
        path = storage.resolve(location)
        return [path] if path.exists() else []
    directory, pattern = location.rsplit("/", 1)
    base = storage.resolve(directory)
    if not base.exists():
        return []
    return sorted((p for p in base.glob(pattern) if p.is_file()), key=str)


def raw_partition_ready(spec: PipelineSpec, ds: dt.date) -> bool:
    """Sensor condition: the day's raw files exist."""
    return bool(raw_locations(spec, ds))


def _read_one(spec: PipelineSpec, path: ObjectStoragePath, data: bytes) -> pd.DataFrame:
    import pandas as pd

    if not data:
        raise DataQualityError(f"raw file {path} is empty (0 bytes)")
    try:
        if spec.source.format == "parquet":
            return pd.read_parquet(io.BytesIO(data))
        return pd.read_csv(io.BytesIO(data))
    except Exception as exc:  # any parser error means the file itself is unusable
        raise DataQualityError(f"raw file {path} cannot be read as {spec.source.format}: {exc}") from exc


def parse_timestamps(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamp column as UTC datetimes (naive values are in the spec's timezone, junk becomes NaT), and
    numeric features and target in nullable extension dtypes (``Int64``, ``Float64``, as pandas writes them
    to Parquet) as numpy numbers (floats with NaN where values are missing), the types the gate expects."""
    import pandas as pd

    numbers = {f.name for f in spec.features if f.type == FeatureType.NUMERIC} | {spec.target.name}
    masked = [c for c, dtype in frame.dtypes.items()
              if c in numbers and isinstance(dtype, pd.api.extensions.ExtensionDtype)
              and pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)]
    if masked:
        frame = frame.assign(**{
            c: frame[c].to_numpy(dtype="float64", na_value=float("nan")) if frame[c].hasnans
            else frame[c].to_numpy(dtype=frame[c].dtype.numpy_dtype)
            for c in masked
        })
    column = spec.timestamp_column
    if column not in frame.columns:
        return frame
    values = frame[column]
    if not pd.api.types.is_datetime64_any_dtype(values):
        values = pd.to_datetime(values, errors="coerce", utc=False, format="mixed")
    if getattr(values.dt, "tz", None) is None:
        values = values.dt.tz_localize(spec.schedule.timezone, ambiguous="NaT", nonexistent="NaT")
    frame = frame.copy()
    frame[column] = values.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return frame


def read_raw_partition(spec: PipelineSpec, ds: dt.date) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The day's raw rows (timestamps parsed) and a description of the source files with hashes."""
    import pandas as pd

    paths = raw_locations(spec, ds)
    if not paths:
        raise MissingDataError(f"no raw data for {spec.name} ds={ds}: nothing at {spec.source.path}")
    frames, sources = [], []
    for path in paths:
        data = path.read_bytes()
        sources.append({"uri": storage.relative(path), "sha256": storage.sha256_bytes(data), "bytes": len(data)})
        frames.append(_read_one(spec, path, data))
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    frame = parse_timestamps(spec, frame)
    if spec.source.kind == "historical":
        if spec.timestamp_column not in frame.columns:
            raise DataQualityError(f"historical source {spec.source.path} has no column {spec.timestamp_column!r}")
        start, end = partition_bounds(spec, ds)
        ts = frame[spec.timestamp_column]
        frame = frame[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))].reset_index(drop=True)
    return frame, sources


def _quarantine(spec: PipelineSpec, ds: dt.date, report: dict[str, Any], rows: pd.DataFrame | None,
                sources: list[dict[str, Any]], raw_files: list[ObjectStoragePath]) -> ObjectStoragePath:
    """Replace the day's quarantine folder with the offending rows (or raw files) and the result."""
    directory = storage.partition_dir(layout.QUARANTINE, spec.name, ds)
    storage.remove_tree(directory)
    if rows is not None:
        # Mixed-type junk columns are what got these rows here: store them as text so Parquet accepts them.
        safe = rows.copy()
        for column in safe.columns:
            if safe[column].dtype == object:
                safe[column] = safe[column].astype("str")
        storage.write_bytes_atomic(directory / "rows.parquet", storage.frame_to_parquet_bytes(safe))
    else:
        for path in raw_files:
            storage.write_bytes_atomic(directory / "raw" / path.name, path.read_bytes())
    storage.write_json_atomic(directory / "validation.json", {**report, "sources": sources})
    return directory


def validate_raw_partition(spec: PipelineSpec, ds: dt.date) -> dict[str, Any]:
    """The data gate. Returns the validation summary; on failure quarantines and raises DataQualityError."""
    return _validated_raw_partition(spec, ds)[2]


def _validated_raw_partition(spec: PipelineSpec, ds: dt.date) -> tuple[pd.DataFrame, list[dict[str, Any]],
                                                                        dict[str, Any]]:
    """Read the day once and gate it: the frame, its sources, and the validation summary."""
    try:
        frame, sources = read_raw_partition(spec, ds)
    except MissingDataError:
        raise
    except DataQualityError as exc:
        paths = raw_locations(spec, ds)
        sources = [{"uri": storage.relative(p)} for p in paths]
        report = {"spec": spec.name, "ds": ds.isoformat(), "success": False, "failures": [str(exc)]}
        where = _quarantine(spec, ds, report, None, sources, paths)
        raise DataQualityError(f"{exc}\nquarantined to {where}") from exc

    if frame.empty and spec.etl.on_missing_day == "skip":
        raise MissingDataError(f"raw data for {spec.name} ds={ds} has no rows")
    report = validate_frame(spec, ds, frame)
    if report.success:
        return frame, sources, {**report.summary(), "sources": sources}

    bad = frame if report.whole_partition_bad else frame.iloc[report.bad_row_positions]
    where = _quarantine(spec, ds, report.to_dict(), bad, sources, [])
    raise DataQualityError(f"{report.message()}\nquarantined {len(bad)} rows and the report to {where}")


def build_features(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Typed feature rows in a stable order: keys, timestamp, features, time features, target."""
    import pandas as pd

    out: dict[str, Any] = {}
    for key in spec.entity_keys:
        out[key] = frame[key].astype("str")
    out[spec.timestamp_column] = frame[spec.timestamp_column]
    for feature in spec.features:
        values = frame[feature.name]
        if feature.type == FeatureType.NUMERIC:
            out[feature.name] = pd.to_numeric(values, errors="raise").astype("float64")
        elif feature.type == FeatureType.BOOLEAN:
            out[feature.name] = _to_boolean(values)
        else:
            out[feature.name] = values.astype("str").where(values.notna(), None).astype("str")
    target = frame[spec.target.name]
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        out[spec.target.name] = pd.to_numeric(target).astype("int64")
    else:
        out[spec.target.name] = pd.to_numeric(target).astype("float64")
    features = add_time_features(pd.DataFrame(out), spec)
    return sort_canonical(
        features[[*spec.entity_keys, spec.timestamp_column, *spec.model_features, spec.target.name]], spec
    )


def _to_boolean(values: pd.Series) -> pd.Series:
    import pandas as pd

    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
    text = values.astype("str").str.strip().str.lower()
    return text.map(mapping).where(values.notna(), None).astype("boolean")


def build_feature_partition(spec: PipelineSpec, ds: dt.date, validation: dict[str, Any]) -> dict[str, Any]:
    """Build the day's features and stage them in the partition folder (not yet published)."""
    frame, sources = read_raw_partition(spec, ds)
    if sources != validation.get("sources"):
        # The raw data changed after the gate passed: never publish unvalidated data.
        raise DataQualityError(f"raw data for {spec.name} ds={ds} changed after validation; rerun the DAG")
    return _stage_features(spec, ds, frame, validation)


def _stage_features(spec: PipelineSpec, ds: dt.date, frame: pd.DataFrame, validation: dict[str, Any]
                    ) -> dict[str, Any]:
    features = build_features(spec, frame)
    data = storage.frame_to_parquet_bytes(features)
    directory = storage.partition_dir(layout.FEATURES, spec.name, ds)
    name = storage.stage_data_file(directory, data)
    schema = {column: str(dtype) for column, dtype in features.dtypes.items()}
    log.info("staged %d feature rows for %s ds=%s as %s", len(features), spec.name, ds, name)
    return {
        "ds": ds.isoformat(),
        "file": {"name": name, "sha256": storage.sha256_bytes(data), "rows": len(features), "bytes": len(data)},
        "schema": schema,
        "sources": validation["sources"],
        "validation": {k: v for k, v in validation.items() if k != "sources"},
    }


def publish_feature_partition(spec: PipelineSpec, ds: dt.date, staged: dict[str, Any]) -> dict[str, Any]:
    """Commit the staged partition: the manifest goes last; returns the partition's reference."""
    directory = storage.partition_dir(layout.FEATURES, spec.name, ds)
    file_entry = staged["file"]
    manifest = {
        "spec": spec.name,
        "ds": ds.isoformat(),
        "rows": file_entry["rows"],
        "content_sha256": file_entry["sha256"],
        "files": [file_entry],
        "schema": staged["schema"],
        "source": {"kind": spec.source.kind, "format": spec.source.format, "files": staged["sources"]},
        "validation": staged["validation"],
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "evergreen_version": __version__,
    }
    manifest_sha = storage.publish(directory, manifest)
    log.info("published %s ds=%s: %d rows, content_sha256=%s", spec.name, ds, manifest["rows"],
             manifest["content_sha256"])
    return {
        "path": str(directory),
        "ds": ds.isoformat(),
        "rows": manifest["rows"],
        "content_sha256": manifest["content_sha256"],
        "manifest_sha256": manifest_sha,
    }


def run_feature_etl(spec: PipelineSpec, ds: dt.date) -> dict[str, Any]:
    """All steps in one call (CLI, benchmarks), reading the raw day once: validate, build, publish."""
    frame, _, validation = _validated_raw_partition(spec, ds)
    return publish_feature_partition(spec, ds, _stage_features(spec, ds, frame, validation))
