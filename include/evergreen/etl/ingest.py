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
from evergreen.etl.labels import binary_labels, label_texts
from evergreen.etl.validation import partition_bounds, validate_frame
from evergreen.spec import ROW_KEY, FeatureType, PipelineSpec, SourceSpec, TaskType

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

# Bump when the feature table layout changes: readers can tell old partitions apart.
FEATURE_SCHEMA_VERSION = 1


def raw_locations(spec: PipelineSpec, ds: dt.date) -> list[ObjectStoragePath]:
    """The raw file(s) holding day ``ds`` (a daily file or glob, or the one historical file)."""
    return source_locations(spec.source, ds)


def source_locations(source: SourceSpec, ds: dt.date) -> list[ObjectStoragePath]:
    """The file(s) of a source for day ``ds`` (a daily file or glob, or the one historical file)."""
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
    return read_source_file(spec.source, path, data)


def read_source_file(source: SourceSpec, path: ObjectStoragePath, data: bytes) -> pd.DataFrame:
    """One file of a source as a frame; an empty, truncated, unparsable or ragged file raises DataQualityError."""
    import pandas as pd

    if not data:
        raise DataQualityError(f"raw file {path} is empty (0 bytes)")
    if source.format == "csv" and not data.endswith(b"\n"):
        # A CSV cut short ends inside its last row, whose last value then parses as a wrong number.
        last = data[data.rfind(b"\n") + 1:][:120].decode("utf-8", "replace")
        raise DataQualityError(f"raw file {path} does not end with a line break: truncated? (last line {last!r})")
    try:
        if source.format == "parquet":
            return pd.read_parquet(io.BytesIO(data))
        na = source.na_values
        frame = pd.read_csv(io.BytesIO(data), na_values=na, keep_default_na=na is None, on_bad_lines="error")
    except Exception as exc:  # any parser error means the file itself is unusable
        raise DataQualityError(f"raw file {path} cannot be read as {source.format}: {exc}") from exc
    short = _short_rows(data, len(frame.columns))
    if short:
        raise DataQualityError(f"raw file {path} has rows with fewer than {len(frame.columns)} fields "
                               f"(lines {short[:5]}): malformed or truncated")
    return frame


def _short_rows(data: bytes, columns: int) -> list[int]:
    """1-based line numbers of CSV rows with fewer separators than the header (pandas pads them with NaN).

    Only a cheap screen on the raw bytes: a file with quoted fields (which may hold commas or line breaks)
    is left to the parser."""
    if b'"' in data or columns < 2:
        return []
    import numpy as np

    lines = data.split(b"\n")
    commas = np.fromiter((line.count(b",") for line in lines), dtype=np.int64, count=len(lines))
    blank = np.fromiter((not line.strip() for line in lines), dtype=bool, count=len(lines))
    bad = np.flatnonzero((commas < columns - 1) & ~blank)
    return [int(i) + 1 for i in bad if i > 0]


# How naive local times that the clock skips or repeats are read (daylight-saving changes), deterministically:
# a repeated (ambiguous) time is its first occurrence, in daylight time; a skipped (non-existent) time is
# read with the offset in force before the change (02:30 on a spring-forward night is 03:30 daylight time).
DST_RULE = "ambiguous: first occurrence (daylight time); non-existent: shifted forward by the change (1 h)"


def localize_naive(values: pd.Series, timezone: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Naive local datetimes -> aware ones in ``timezone`` by :data:`DST_RULE`; and the masks of the
    ambiguous and the non-existent values."""
    import numpy as np
    import pandas as pd

    strict = values.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    unresolved = strict.isna() & values.notna()
    if not unresolved.any():
        return strict, unresolved, unresolved
    first = np.ones(len(values), dtype=bool)  # True: daylight time, the first pass of a repeated hour
    resolved = values.dt.tz_localize(timezone, ambiguous=first, nonexistent=pd.Timedelta(hours=1))
    nonexistent = values.dt.tz_localize(timezone, ambiguous=first, nonexistent="NaT").isna() & values.notna()
    return resolved, unresolved & ~nonexistent, nonexistent


def assemble_timestamp(spec: PipelineSpec, frame: pd.DataFrame) -> pd.Series:
    """The naive timestamp built from ``spec.timestamp_parts`` (junk parts give NaT)."""
    import pandas as pd

    parts = spec.timestamp_parts or {}
    absent = sorted(c for c in parts.values() if c not in frame.columns)
    if absent:
        raise DataQualityError(f"{spec.name}: raw data lack the timestamp part columns {absent}")

    def number(role: str) -> pd.Series:
        return pd.to_numeric(frame[parts[role]], errors="coerce") if role in parts else pd.Series(0, index=frame.index)

    offset = pd.to_timedelta(number("hour"), unit="h") + pd.to_timedelta(number("minute"), unit="m")
    if "date" in parts:
        base = pd.to_datetime(frame[parts["date"]], errors="coerce", format="mixed")
    else:
        base = pd.to_datetime({"year": number("year"), "month": number("month"), "day": number("day")}, errors="coerce")
    return base + offset


def parse_timestamps(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`parse_timestamps_flagged` without the flags."""
    return parse_timestamps_flagged(spec, frame)[0]


def parse_timestamps_flagged(spec: PipelineSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Timestamp column as UTC datetimes (assembled from its parts if the spec says so; naive values are in
    the spec's timezone, read by :data:`DST_RULE`; junk becomes NaT), and numeric features and target in
    nullable extension dtypes (``Int64``, ``Float64``, as pandas writes them to Parquet) as numpy numbers
    (floats with NaN where values are missing), the types the gate expects. Also, per row, whether the
    daylight-saving rule decided its time (``ambiguous``, ``nonexistent``) or it was unreadable."""
    import pandas as pd

    numbers = {f.name for f in spec.features if f.type == FeatureType.NUMERIC}
    if spec.target.positive_label is None:
        numbers.add(spec.target.name)
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
    none = pd.Series(False, index=frame.index)
    flags = pd.DataFrame({"ambiguous": none, "nonexistent": none, "unreadable": none})
    if spec.timestamp_parts:
        values = assemble_timestamp(spec, frame)
    elif column in frame.columns:
        values = frame[column]
    else:
        return frame, flags
    given = values.notna()
    if not pd.api.types.is_datetime64_any_dtype(values):
        values = pd.to_datetime(values, errors="coerce", utc=False, format="mixed")
    if getattr(values.dt, "tz", None) is None:
        values, flags["ambiguous"], flags["nonexistent"] = localize_naive(values, spec.schedule.timezone)
    flags["unreadable"] = given & values.isna()
    frame = frame.copy()
    frame[column] = values.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return frame, flags


def derive_row_key(spec: PipelineSpec, frame: pd.DataFrame) -> pd.Series:
    """A key for a table without one: a hash of the row's named columns, plus its occurrence number among
    identical rows. The same rows give the same keys in any order and on every rerun."""
    import pandas as pd

    columns = sorted(c for c in spec.source_columns | {spec.timestamp_column} if c in frame.columns and c != ROW_KEY)
    digest = pd.util.hash_pandas_object(frame[columns].astype("str"), index=False)
    text = digest.map("{:016x}".format)
    occurrence = text.groupby(text).cumcount()
    return (text + "-" + occurrence.astype("str")).astype("str")


def read_raw_partition(spec: PipelineSpec, ds: dt.date) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, Any]]:
    """The day's raw rows (see :func:`read_raw_frame`), the source files with hashes, and the read counts."""
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
    frame, read = read_raw_frame(spec, ds, frame)
    return frame, sources, read


def read_raw_frame(spec: PipelineSpec, ds: dt.date, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The raw rows of day ``ds`` from the file(s) read: timestamps parsed, a historical source cut to the
    day, ignored columns dropped, the row key derived; and what the reading decided, counted (it goes into
    the validation summary and the manifest)."""
    import pandas as pd

    file_rows = len(frame)
    frame, flags = parse_timestamps_flagged(spec, frame)
    frame = frame.drop(columns=[c for c in spec.etl.ignore_columns if c in frame.columns])
    read: dict[str, Any] = {"file_rows": file_rows, "timestamp_rule": DST_RULE}
    if spec.source.kind == "historical":
        if spec.timestamp_column not in frame.columns:
            raise DataQualityError(f"historical source {spec.source.path} has no column {spec.timestamp_column!r}")
        start, end = partition_bounds(spec, ds)
        ts = frame[spec.timestamp_column]
        if ts.notna().any():
            read["file_range"] = [ts.min().isoformat(), ts.max().isoformat()]
        # Rows whose time cannot be read belong to no day: counted on every day the file feeds.
        read["file_unreadable_timestamps"] = int(flags["unreadable"].sum())
        in_day = ((ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))).to_numpy()
        frame, flags = frame[in_day].reset_index(drop=True), flags[in_day]
        if frame.empty:  # a day the file does not hold: missing (the spec's on_missing_day), not a 0-row day
            covered = " .. ".join(read.get("file_range", ["(no readable timestamps)"]))
            raise MissingDataError(f"no rows for {spec.name} ds={ds} in {spec.source.path} (it covers {covered}; "
                                   f"{read['file_unreadable_timestamps']} rows have unreadable timestamps)")
    read.update(ambiguous_local_times=int(flags["ambiguous"].sum()),
                nonexistent_local_times=int(flags["nonexistent"].sum()),
                unreadable_timestamps=int(flags["unreadable"].sum()))
    if spec.derive_row_key:
        frame = frame.assign(**{ROW_KEY: derive_row_key(spec, frame)})
    read["extra_columns"] = sorted(c for c in frame.columns if c not in spec.source_columns
                                   and c not in (ROW_KEY, spec.timestamp_column))
    return frame, read


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
        frame, sources, read = read_raw_partition(spec, ds)
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
    extra = read["extra_columns"]
    if extra and spec.etl.extra_columns == "fail":
        report = {"spec": spec.name, "ds": ds.isoformat(), "success": False, "read": read,
                  "failures": [f"raw columns the spec does not name (etl.extra_columns: fail): {extra}"]}
        where = _quarantine(spec, ds, report, None, sources, raw_locations(spec, ds))
        raise DataQualityError(f"{spec.name} ds={ds}: {report['failures'][0]}\nquarantined to {where}")
    if extra and spec.etl.extra_columns == "warn":
        log.warning("%s ds=%s: raw columns the spec does not name are not used: %s (set etl.extra_columns or "
                    "etl.ignore_columns to silence this)", spec.name, ds, extra)
    report = validate_frame(spec, ds, frame)
    if report.success:
        return frame, sources, {**report.summary(), "read": read, "sources": sources}

    bad = frame if report.whole_partition_bad else frame.iloc[report.bad_row_positions]
    where = _quarantine(spec, ds, report.to_dict(), bad, sources, [])
    raise DataQualityError(f"{report.message()}\nquarantined {len(bad)} rows and the report to {where}")


def build_features(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Typed feature rows in a stable order: keys, timestamp, features, time features, attributes, target."""
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
            out[feature.name] = label_texts(values)  # 1, 1.0 and "1" are one category
    if spec.labels is None:
        out[spec.target.name] = target_column(spec, frame[spec.target.name])
    else:  # the labels arrive later, from their own source: joined at training and in the outcomes
        out[spec.target.name] = pd.Series(float("nan"), index=frame.index, dtype="float64")
    features = add_time_features(pd.DataFrame(out), spec)
    return sort_canonical(
        features[spec.feature_table_columns], spec
    )


def target_column(spec: PipelineSpec, raw: pd.Series) -> pd.Series:
    """The stored target: 0/1 for a binary one (its labels mapped by ``positive_label``), numbers for a
    regression. ``int64`` for a binary target that must be present, else ``float64`` with NaN where missing."""
    import pandas as pd

    target = spec.target
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        values = binary_labels(raw, target.positive_label, target.negative_label) \
            if target.positive_label is not None else pd.to_numeric(raw)
        if not spec.labels_may_be_missing:
            return values.astype("int64")
        return pd.Series(values.astype("Float64").to_numpy(dtype="float64", na_value=float("nan")), index=raw.index)
    return pd.to_numeric(raw).astype("float64")


def target_summary(spec: PipelineSpec, values: pd.Series) -> dict[str, Any]:
    """Labelled and missing rows of a stored target, and the rows per class of a binary one (manifest)."""
    missing = int(values.isna().sum())
    out: dict[str, Any] = {"labelled_rows": len(values) - missing, "missing_rows": missing}
    if spec.labels is not None:
        out["labels"] = "separate"  # counted by the outcomes join, as of a day, not here
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        known = values.dropna()
        out["classes"] = {"0": int((known == 0).sum()), "1": int((known == 1).sum())}
        if spec.target.positive_label is not None:
            out["positive_label"] = spec.target.positive_label
            out["negative_label"] = spec.target.negative_label
    return out


def _to_boolean(values: pd.Series) -> pd.Series:
    import pandas as pd

    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
    text = values.astype("str").str.strip().str.lower()
    return text.map(mapping).where(values.notna(), None).astype("boolean")


def build_feature_partition(spec: PipelineSpec, ds: dt.date, validation: dict[str, Any]) -> dict[str, Any]:
    """Build the day's features and stage them in the partition folder (not yet published)."""
    frame, sources, _ = read_raw_partition(spec, ds)
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
        "target": target_summary(spec, features[spec.target.name]),
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
        **({"target": staged["target"]} if "target" in staged else {}),
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
