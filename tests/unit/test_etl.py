"""ETL library: validation gate, quarantine, typed features, idempotent atomic publication."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from evergreen import layout, storage
from evergreen.errors import DataQualityError, MissingDataError
from evergreen.etl import ingest as etl
from evergreen.simulate import generate_day, land_days
from evergreen.spec import get_spec
from helpers import (
    bad_duplicate_keys,
    bad_out_of_range,
    bad_timestamp_outside_day,
    bad_unknown_category,
    bad_wrong_type,
)

DAY = dt.date(2026, 11, 1)
FRAUD = get_spec("fraud")
ETA = get_spec("delivery_eta")


def _raw_path(spec, day: dt.date) -> Path:
    return Path(storage.resolve(spec.source.path.format(ds=day.isoformat())).path)


def _write_raw(spec, day: dt.date, frame: pd.DataFrame) -> None:
    path = _raw_path(spec, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.source.format == "parquet":
        path.write_bytes(storage.frame_to_parquet_bytes(frame))
    else:
        frame.to_csv(path, index=False)


def _quarantine_report(spec, day: dt.date) -> dict:
    directory = storage.partition_dir(layout.QUARANTINE, spec.name, day)
    return json.loads((directory / "validation.json").read_bytes())


@pytest.mark.parametrize("spec", [FRAUD, ETA], ids=["parquet", "csv"])
def test_good_day_publishes_typed_partition(storage_root: Path, spec) -> None:
    land_days(spec, DAY, DAY)
    ref = etl.run_feature_etl(spec, DAY)
    directory = storage.partition_dir("features", spec.name, DAY)
    manifest = storage.read_manifest(directory)
    assert manifest is not None and manifest["content_sha256"] == ref["content_sha256"]
    assert manifest["validation"]["success"] is True and manifest["validation"]["failed"] == 0
    assert manifest["source"]["files"][0]["uri"] == spec.source.path.format(ds=DAY.isoformat())
    frame = storage.read_partition(directory)
    assert len(frame) == manifest["rows"] > 0
    assert list(frame.columns) == [*spec.entity_keys, spec.timestamp_column, *spec.model_features, spec.target.name]
    for name, kind in spec.model_features.items():
        column = frame[name]
        if kind == "numeric":
            assert pd.api.types.is_float_dtype(column), name
        elif kind == "boolean":
            assert pd.api.types.is_bool_dtype(column), name
        else:
            assert pd.api.types.is_string_dtype(column), name
    ts = frame[spec.timestamp_column]
    assert ts.is_monotonic_increasing
    assert ts.min() >= pd.Timestamp(DAY, tz="UTC") and ts.max() < pd.Timestamp(DAY + dt.timedelta(days=1), tz="UTC")
    assert (frame["event_hour"] == ts.dt.hour).all()


def test_rerun_is_byte_identical_and_touches_no_other_partition(storage_root: Path) -> None:
    land_days(FRAUD, DAY, DAY + dt.timedelta(days=1))
    other = etl.run_feature_etl(FRAUD, DAY + dt.timedelta(days=1))
    other_dir = Path(storage.partition_dir("features", "fraud", DAY + dt.timedelta(days=1)).path)
    before = {p.name: p.stat().st_mtime_ns for p in other_dir.iterdir()}
    first = etl.run_feature_etl(FRAUD, DAY)
    second = etl.run_feature_etl(FRAUD, DAY)
    assert first == second
    assert {p.name: p.stat().st_mtime_ns for p in other_dir.iterdir()} == before
    assert other["content_sha256"] != first["content_sha256"]


def test_input_row_order_does_not_change_the_output(storage_root: Path) -> None:
    raw = generate_day(FRAUD, DAY)
    _write_raw(FRAUD, DAY, raw)
    first = etl.run_feature_etl(FRAUD, DAY)
    _write_raw(FRAUD, DAY, raw.sample(frac=1.0, random_state=3))
    assert etl.run_feature_etl(FRAUD, DAY)["content_sha256"] == first["content_sha256"]


@pytest.mark.parametrize(
    ("corrupt", "expect_in_message", "bad_rows"),
    [
        (bad_wrong_type, "amount: expect_column_values_to_be_in_type_list", None),
        (bad_out_of_range, "device_risk_score: expect_column_values_to_be_between, 2 unexpected rows", 2),
        (bad_unknown_category, "'carrier_pigeon'", 1),
        (bad_duplicate_keys, "transaction_id: expect_column_values_to_be_unique", 2),
        (bad_timestamp_outside_day, "event_ts: expect_column_values_to_be_between, 1 unexpected rows", 1),
        (lambda raw: raw.drop(columns=["country"]), "country: expect_column_to_exist", None),
        (lambda raw: raw.head(20), "expect_table_row_count_to_be_between", None),
    ],
    ids=["wrong_type", "out_of_range", "unknown_category", "duplicate_keys", "timestamp_outside", "missing_column",
         "too_few_rows"],
)
def test_bad_data_is_quarantined_and_never_published(storage_root: Path, corrupt, expect_in_message: str,
                                                     bad_rows: int | None) -> None:
    earlier = DAY - dt.timedelta(days=1)
    land_days(FRAUD, earlier, earlier)
    earlier_ref = etl.run_feature_etl(FRAUD, earlier)
    raw = generate_day(FRAUD, DAY)
    _write_raw(FRAUD, DAY, corrupt(raw))
    with pytest.raises(DataQualityError) as info:
        etl.run_feature_etl(FRAUD, DAY)
    message = str(info.value)
    assert "data validation failed for fraud ds=2026-11-01" in message
    assert expect_in_message in message
    assert "quarantined" in message
    assert storage.read_manifest(storage.partition_dir("features", "fraud", DAY)) is None
    report = _quarantine_report(FRAUD, DAY)
    assert report["success"] is False and report["failures"]
    rows = pd.read_parquet(io.BytesIO((storage.partition_dir("quarantine", "fraud", DAY) / "rows.parquet").read_bytes()))
    assert len(rows) == (bad_rows if bad_rows is not None else len(corrupt(raw)))
    # The earlier partition is intact.
    assert storage.read_manifest(storage.partition_dir("features", "fraud", earlier))["content_sha256"] == earlier_ref[
        "content_sha256"]


@pytest.mark.parametrize(("payload", "message"), [(b"", "is empty (0 bytes)"), (b"PAR1\x00garbage\xff", "cannot be read")],
                         ids=["empty_file", "corrupt_file"])
def test_unreadable_file_is_quarantined(storage_root: Path, payload: bytes, message: str) -> None:
    path = _raw_path(FRAUD, DAY)
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)
    with pytest.raises(DataQualityError, match=re.escape(message)):
        etl.run_feature_etl(FRAUD, DAY)
    quarantine = Path(storage.partition_dir("quarantine", "fraud", DAY).path)
    assert (quarantine / "raw" / path.name).read_bytes() == payload
    assert message in _quarantine_report(FRAUD, DAY)["failures"][0]
    assert storage.list_partitions("features", "fraud") == {}


def test_missing_day_raises_missing_data(storage_root: Path) -> None:
    assert etl.raw_partition_ready(FRAUD, DAY) is False
    with pytest.raises(MissingDataError, match="no raw data"):
        etl.validate_raw_partition(FRAUD, DAY)


def test_csv_with_naive_timestamps_and_text_booleans(storage_root: Path) -> None:
    raw = generate_day(ETA, DAY)
    raw["ordered_at"] = raw["ordered_at"].dt.tz_localize(None).astype("str")
    raw["is_peak"] = raw["is_peak"].map({True: "true", False: "false"})
    _write_raw(ETA, DAY, raw)
    etl.run_feature_etl(ETA, DAY)
    frame = storage.read_partition(storage.partition_dir("features", "delivery_eta", DAY))
    assert pd.api.types.is_bool_dtype(frame["is_peak"])
    assert frame["is_peak"].sum() == (raw["is_peak"] == "true").sum()


def test_historical_source_is_filtered_to_the_day(storage_root: Path) -> None:
    days = [DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)]
    history = pd.concat([generate_day(FRAUD, d) for d in days], ignore_index=True)
    spec = FRAUD.model_copy(update={"source": FRAUD.source.model_copy(
        update={"kind": "historical", "path": "history/fraud.parquet"})})
    target = Path(storage.resolve("history/fraud.parquet").path)
    target.parent.mkdir(parents=True)
    target.write_bytes(storage.frame_to_parquet_bytes(history))
    ref = etl.run_feature_etl(spec, DAY)
    assert ref["rows"] == len(generate_day(FRAUD, DAY))


def test_validation_change_after_gate_is_refused(storage_root: Path) -> None:
    land_days(FRAUD, DAY, DAY)
    validation = etl.validate_raw_partition(FRAUD, DAY)
    land_days(FRAUD, DAY, DAY, seed=7)
    with pytest.raises(DataQualityError, match="changed after validation"):
        etl.build_feature_partition(FRAUD, DAY, validation)
