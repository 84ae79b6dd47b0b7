"""What real tables need (issue 12), through the library as the ETL and training DAGs call it: labels
given as strings, integer codes, optional labels, timestamps from parts, no entity key, extra columns,
daylight-saving days east and west of UTC, truncated files, days a historical file does not hold, and
holdouts that miss a class."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from evergreen import layout, storage
from evergreen.errors import DataQualityError, MissingDataError
from evergreen.etl import ingest
from evergreen.factory import resolve_partition_date
from evergreen.spec import ROW_KEY, SpecError, load_spec
from evergreen.training.window import load_day, select_window
from helpers import land_csv, local_hours, sensor_readings, sensor_spec_yaml

# Both daylight-saving changes of 2026 in each zone: (spring forward, fall back), as local dates.
TRANSITIONS = {
    "America/New_York": (dt.date(2026, 3, 8), dt.date(2026, 11, 1)),
    "America/Chicago": (dt.date(2026, 3, 8), dt.date(2026, 11, 1)),
    "Australia/Sydney": (dt.date(2026, 10, 4), dt.date(2026, 4, 5)),
}


def write_spec(folder: Path, name: str, timezone: str = "UTC", **sections: str):
    path = folder / f"{name}.yaml"
    path.write_text(sensor_spec_yaml(name, timezone, **sections))
    return load_spec(path)


def manifest(spec, ds: dt.date) -> dict:
    return storage.read_manifest(storage.partition_dir(layout.FEATURES, spec.name, ds))


def features(spec, ds: dt.date) -> pd.DataFrame:
    return storage.read_partition(storage.partition_dir(layout.FEATURES, spec.name, ds))


# ----------------------------------------------------------------------------------------- spec fields


def test_spec_vocabulary_errors_name_file_and_field(tmp_path: Path) -> None:
    bad = {
        "positive_label on a regression": ("task_type: binary_classification", "task_type: regression",
                                           "positive_label applies to binary_classification only"),
        "timestamp parts": ("timestamp_column: read_at",
                            "timestamp_column: read_at\ntimestamp_parts: {year: y, hour: h}",
                            "timestamp_parts: give"),
        "equal labels": ('negative_label: "no"', 'negative_label: "yes"', "must differ"),
        "float codes as dicts": ("allowed_values: [1, 2, 3, 4]", "allowed_values: [{a: 1}]",
                                 "features.1.allowed_values.0"),
    }
    for label, (old, new, message) in bad.items():
        path = tmp_path / "bad.yaml"
        text = sensor_spec_yaml("bad", "UTC")
        assert old in text, label
        path.write_text(text.replace(old, new, 1))
        with pytest.raises(SpecError) as caught:
            load_spec(path)
        assert str(path) in str(caught.value) and message in str(caught.value), (label, str(caught.value))
    spec = write_spec(tmp_path, "good")
    assert spec.entity_keys == [ROW_KEY] and spec.derive_row_key
    assert spec.feature("season").allowed_values == [1, 2, 3, 4]  # integers stay integers
    assert spec.target.positive_label == "yes"


# ------------------------------------------------------------------------------------ labels and codes


def test_string_labels_integer_codes_row_keys_and_extra_columns(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "sensor")
    day = dt.date(2026, 5, 4)
    raw = sensor_readings("UTC", day - dt.timedelta(days=1), day + dt.timedelta(days=1))
    land_csv(raw, spec.source.path)
    ingest.run_feature_etl(spec, day)
    frame = features(spec, day)
    expected = raw[raw.read_at.str.startswith(day.isoformat())]
    assert len(frame) == len(expected) == 24
    # "yes"/"no" stored as 1/0, the mapping recorded with the counts.
    assert frame["alarm"].dtype == "int64"
    assert frame["alarm"].sum() == (expected.alarm == "yes").sum()
    target = manifest(spec, day)["target"]
    assert target["positive_label"] == "yes" and target["negative_label"] == "no"
    assert target["classes"] == {"0": int((expected.alarm == "no").sum()), "1": int((expected.alarm == "yes").sum())}
    # Integer codes read as floats (a missing code in the column) are the same categories as integers.
    assert set(frame["season"].dropna()) <= {"1", "2", "3", "4"}
    assert frame["season"].isna().sum() == expected.season.isna().sum()
    # A derived key, unique and the same on a rerun; the unnamed column reported, not silently dropped.
    assert frame[ROW_KEY].is_unique
    read = manifest(spec, day)["validation"]["read"]
    assert read["extra_columns"] == ["operator"] and read["file_rows"] == len(raw)
    ingest.run_feature_etl(spec, day)
    assert features(spec, day)[ROW_KEY].tolist() == frame[ROW_KEY].tolist()


def test_quoted_codes_and_unknown_labels(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "sensor", features=(
        "features:\n  - {name: level, type: numeric}\n"
        "  - {name: season, type: categorical, allowed_values: [\"1\", \"2\", \"3\", \"4\"], max_null_fraction: 0.5}"))
    day = dt.date(2026, 5, 4)
    raw = sensor_readings("UTC", day, day)
    land_csv(raw, spec.source.path)
    assert ingest.run_feature_etl(spec, day)["rows"] == 24  # quoted codes match integer cells
    land_csv(raw.assign(alarm=raw.alarm.where(raw.index != 5, "maybe")), spec.source.path)
    with pytest.raises(DataQualityError, match=r"alarm: expect_column_values_to_be_in_set, 1 unexpected rows"):
        ingest.run_feature_etl(spec, day)


def test_extra_columns_fail_when_the_spec_says_so(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "strict", etl="etl: {extra_columns: fail}")
    day = dt.date(2026, 5, 4)
    land_csv(sensor_readings("UTC", day, day), spec.source.path)
    with pytest.raises(DataQualityError, match=r"raw columns the spec does not name .*\['operator'\]"):
        ingest.run_feature_etl(spec, day)
    ignoring = write_spec(tmp_path, "lenient", etl="etl: {extra_columns: fail, ignore_columns: [operator]}")
    land_csv(sensor_readings("UTC", day, day), ignoring.source.path)
    assert ingest.run_feature_etl(ignoring, day)["rows"] == 24


# ------------------------------------------------------------------------------- optional labels


def test_missing_labels_are_kept_counted_and_never_trained_on(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "late", target='target: {name: alarm, positive_label: "yes", allow_missing: true}')
    first = dt.date(2026, 5, 1)
    raw = sensor_readings("UTC", first, first + dt.timedelta(days=7))
    raw.loc[raw.index % 5 == 0, "alarm"] = None
    land_csv(raw, spec.source.path)
    for i in range(8):
        ingest.run_feature_etl(spec, first + dt.timedelta(days=i))
    day = first + dt.timedelta(days=3)
    target = manifest(spec, day)["target"]
    stored = features(spec, day)
    assert len(stored) == 24 and target["missing_rows"] == int(stored["alarm"].isna().sum()) > 0
    assert target["labelled_rows"] == 24 - target["missing_rows"]
    assert load_day(spec, day)["alarm"].notna().all()
    assert len(load_day(spec, day)) == target["labelled_rows"]
    window = select_window(spec, first + dt.timedelta(days=7))
    assert window.rows == sum(manifest(spec, d)["target"]["labelled_rows"] for d in window.partitions)


def test_a_holdout_without_positives_is_extended_back(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "office")
    first = dt.date(2026, 5, 1)
    raw = sensor_readings("UTC", first, first + dt.timedelta(days=9), seed=3)
    quiet = raw.read_at >= (first + dt.timedelta(days=7)).isoformat()  # the last three days: no alarm
    raw.loc[quiet, "alarm"] = "no"
    land_csv(raw, spec.source.path)
    for i in range(10):
        ingest.run_feature_etl(spec, first + dt.timedelta(days=i))
    window = select_window(spec, first + dt.timedelta(days=9))
    assert window.holdout_days == [first + dt.timedelta(days=i) for i in range(6, 10)]  # 2 days -> 4
    assert len(window.validation_days) == 2 and len(window.train_days) == 4


# ------------------------------------------------------------------------------------------- time


@pytest.mark.parametrize("timezone", sorted(TRANSITIONS))
def test_daylight_saving_days_keep_every_row(tmp_path: Path, storage_root: Path, timezone: str) -> None:
    spec = write_spec(tmp_path, "dst", timezone)
    spring, fall = TRANSITIONS[timezone]
    for day, hours, ambiguous in ((spring, 23, 0), (fall, 25, 2)):
        raw = sensor_readings(timezone, day - dt.timedelta(days=1), day + dt.timedelta(days=1))
        # The clock of a real logger on the spring-forward day also writes the skipped hour once.
        if day == spring:
            skipped = (dt.datetime.combine(day, dt.time(2 if timezone.startswith("America") else 2)))
            raw = pd.concat([raw, raw.iloc[[30]].assign(read_at=skipped.strftime("%Y-%m-%d %H:%M:%S"))],
                            ignore_index=True)
        land_csv(raw, spec.source.path)
        ingest.run_feature_etl(spec, day)
        read = manifest(spec, day)["validation"]["read"]
        in_day = sum(1 for h in raw.read_at if h.startswith(day.isoformat()))
        assert len(features(spec, day)) == in_day == hours + (1 if day == spring else 0), (timezone, day)
        assert read["ambiguous_local_times"] == ambiguous, (timezone, day, read)
        assert read["nonexistent_local_times"] == (1 if day == spring else 0), (timezone, day, read)
        assert read["unreadable_timestamps"] == 0
        # Every local hour of the day shows up in the derived time feature; none became another day's.
        stored = features(spec, day)
        local = pd.to_datetime(stored["read_at"], utc=True).dt.tz_convert(timezone)
        assert set(local.dt.date) == {day}


def test_local_hours_repeat_and_skip() -> None:
    fall = local_hours("America/New_York", dt.date(2026, 11, 1), dt.date(2026, 11, 1))
    assert len(fall) == 25 and fall.count("2026-11-01 01:00:00") == 2
    spring = local_hours("America/New_York", dt.date(2026, 3, 8), dt.date(2026, 3, 8))
    assert len(spring) == 23 and "2026-03-08 02:00:00" not in spring


@pytest.mark.parametrize("timezone", [*sorted(TRANSITIONS), "UTC", "Asia/Tokyo"])
def test_partition_date_for_every_way_a_run_starts_in_every_timezone(timezone: str) -> None:
    import zoneinfo

    tz = zoneinfo.ZoneInfo(timezone)
    days = [*TRANSITIONS.get(timezone, ()), dt.date(2026, 1, 15), dt.date(2026, 7, 15)]
    for day in days:
        local_midnight = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC)
        next_midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz).astimezone(dt.UTC)
        utc_midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        ways = {
            # Scheduled run and backfill: the interval of the local day, logical date = its start.
            "scheduled": dict(data_interval_start=local_midnight, data_interval_end=next_midnight,
                              logical_date=local_midnight, run_after=next_midnight, run_type="scheduled"),
            "backfill": dict(data_interval_start=local_midnight, data_interval_end=next_midnight,
                             logical_date=local_midnight, run_after=next_midnight, run_type="backfill"),
            # `airflow dags test DAG <day>`: 00:00 UTC of the day, the interval inferred before it.
            "dags_test": dict(data_interval_start=utc_midnight - dt.timedelta(days=1), data_interval_end=utc_midnight,
                              logical_date=utc_midnight, run_after=utc_midnight, run_type="manual"),
            # A UI trigger without a logical date, the morning after (local time).
            "manual": dict(data_interval_start=None, data_interval_end=None, logical_date=None,
                           run_after=next_midnight + dt.timedelta(hours=9), run_type="manual"),
            "asset": dict(data_interval_start=next_midnight + dt.timedelta(hours=2),
                          data_interval_end=next_midnight + dt.timedelta(hours=2), logical_date=None,
                          run_after=next_midnight + dt.timedelta(hours=2), run_type="asset_triggered"),
        }
        for way, kwargs in ways.items():
            assert resolve_partition_date(None, timezone=timezone, **kwargs) == day, (timezone, day, way)
        assert resolve_partition_date(day.isoformat(), timezone=timezone, **ways["dags_test"]) == day


# ------------------------------------------------------------------------------------ honest failures


def test_truncated_and_short_csv_files_fail_naming_the_file(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "cut")
    day = dt.date(2026, 5, 4)
    path = land_csv(sensor_readings("UTC", day, day), spec.source.path)
    text = path.read_bytes()
    path.write_bytes(text[:-4])  # cut inside the last value ("no\n" or "yes\n" and a digit before it)
    with pytest.raises(DataQualityError, match=r"readings.csv does not end with a line break: truncated"):
        ingest.run_feature_etl(spec, day)
    lines = text.split(b"\n")
    lines[3] = b",".join(lines[3].split(b",")[:3])
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataQualityError, match=r"readings.csv has rows with fewer than 5 fields \(lines \[4\]\)"):
        ingest.run_feature_etl(spec, day)
    quarantined = storage.partition_dir(layout.QUARANTINE, spec.name, day) / "validation.json"
    assert quarantined.exists()


def test_days_a_historical_file_does_not_hold_are_missing(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "history")
    land_csv(sensor_readings("UTC", dt.date(2026, 5, 1), dt.date(2026, 5, 3)), spec.source.path)
    with pytest.raises(MissingDataError, match=r"no rows for history ds=2026-05-09 .* covers 2026-05-01T00:00:00\+00:00"):
        ingest.run_feature_etl(spec, dt.date(2026, 5, 9))
    assert not storage.partition_dir(layout.QUARANTINE, spec.name, dt.date(2026, 5, 9)).exists()


def test_timestamp_from_parts(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "parts", "Asia/Shanghai",
                      timestamp="timestamp_column: read_at\ntimestamp_parts: {year: year, month: month, day: day, hour: hour}")
    day = dt.date(2026, 5, 4)
    raw = sensor_readings("Asia/Shanghai", day, day)
    stamps = pd.to_datetime(raw.pop("read_at"))
    raw = raw.assign(year=stamps.dt.year, month=stamps.dt.month, day=stamps.dt.day, hour=stamps.dt.hour)
    land_csv(raw, spec.source.path)
    ingest.run_feature_etl(spec, day)
    stored = features(spec, day)
    local = pd.to_datetime(stored["read_at"], utc=True).dt.tz_convert("Asia/Shanghai")
    assert len(stored) == 24 and sorted(local.dt.hour) == list(range(24))
    assert manifest(spec, day)["validation"]["read"]["extra_columns"] == ["operator"]  # parts are named


def test_timestamp_from_a_date_and_an_hour_column(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "split", "America/Chicago",
                      timestamp="timestamp_column: read_at\ntimestamp_parts: {date: day, hour: hour}")
    day = dt.date(2026, 11, 1)  # fall back: the hour 1 appears twice
    raw = sensor_readings("America/Chicago", day, day)
    stamps = pd.to_datetime(raw.pop("read_at"))
    land_csv(raw.assign(day=stamps.dt.strftime("%Y-%m-%d"), hour=stamps.dt.hour), spec.source.path)
    assert ingest.run_feature_etl(spec, day)["rows"] == 25
    assert manifest(spec, day)["validation"]["read"]["ambiguous_local_times"] == 2


def test_a_truncated_parquet_file_fails_naming_the_file(tmp_path: Path, storage_root: Path) -> None:
    spec = write_spec(tmp_path, "pq", source="source: {kind: daily_files, path: 'raw/pq/ds={ds}/part.parquet', "
                                             "format: parquet}")
    day = dt.date(2026, 5, 4)
    path = Path(storage.at(f"raw/pq/ds={day}/part.parquet").path)
    path.parent.mkdir(parents=True)
    sensor_readings("UTC", day, day).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataQualityError, match=r"part.parquet cannot be read as parquet"):
        ingest.run_feature_etl(spec, day)
