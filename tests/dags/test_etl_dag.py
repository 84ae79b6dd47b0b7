"""The feature ETL DAG end to end through ``dag.test()``: local storage and S3 over HTTP (moto server)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from evergreen import storage
from evergreen.factory import resolve_partition_date
from evergreen.simulate import land_days
from evergreen.spec import get_spec
from helpers import run_dag, task_states

FRAUD = get_spec("fraud")
DAYS = [dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)]
UTC = dt.UTC


@pytest.mark.parametrize(
    ("explicit", "start", "end", "logical", "run_after", "expected"),
    [
        # Scheduled / backfill run on the data-interval timetable: logical date = interval start.
        (None, dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2026, 11, 2, tzinfo=UTC),
         dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2026, 11, 2, tzinfo=UTC), dt.date(2026, 11, 1)),
        # `airflow dags test DAG 2026-11-01`: the inferred interval is the day before; the date given wins.
        (None, dt.datetime(2026, 10, 31, tzinfo=UTC), dt.datetime(2026, 11, 1, tzinfo=UTC),
         dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2026, 11, 1, tzinfo=UTC), dt.date(2026, 11, 1)),
        # Manual run from the UI without a logical date: the last full day before run_after.
        (None, None, None, None, dt.datetime(2026, 11, 26, 9, 30, tzinfo=UTC), dt.date(2026, 11, 25)),
        # Asset-triggered run: zero-length interval, no logical date.
        (None, dt.datetime(2026, 11, 26, 9, tzinfo=UTC), dt.datetime(2026, 11, 26, 9, tzinfo=UTC), None,
         dt.datetime(2026, 11, 26, 9, tzinfo=UTC), dt.date(2026, 11, 25)),
        # The explicit param beats everything.
        ("2026-10-15", None, None, dt.datetime(2026, 11, 1, tzinfo=UTC), None, dt.date(2026, 10, 15)),
    ],
    ids=["scheduled", "dags_test", "manual_no_logical_date", "asset_triggered", "explicit_param"],
)
def test_partition_date_for_every_way_a_run_starts(explicit, start, end, logical, run_after, expected) -> None:
    got = resolve_partition_date(explicit, data_interval_start=start, data_interval_end=end, logical_date=logical,
                                 run_after=run_after, timezone="UTC")
    assert got == expected


def test_partition_date_uses_the_spec_timezone() -> None:
    late_utc = dt.datetime(2026, 11, 1, 23, 30, tzinfo=UTC)
    assert resolve_partition_date(None, data_interval_start=None, data_interval_end=None, logical_date=late_utc,
                                  run_after=None, timezone="Asia/Tokyo") == dt.date(2026, 11, 2)


def _published(spec_name: str) -> dict[dt.date, dict]:
    return {ds: storage.read_manifest(d) for ds, d in storage.list_partitions("features", spec_name).items()}


def test_etl_dag_local_several_dates_and_rerun(airflow_db: Path, storage_root: Path) -> None:
    land_days(FRAUD, DAYS[0], DAYS[-1])
    for day in DAYS:
        run = run_dag("fraud_feature_etl", day)
        assert str(run.state) == "success", task_states(run)
        assert set(task_states(run).values()) == {"success"}
    published = _published("fraud")
    assert list(published) == DAYS
    first_hash = published[DAYS[1]]["content_sha256"]
    manifest_bytes = (storage.partition_dir("features", "fraud", DAYS[1]) / "_manifest.json").read_bytes()
    rerun = run_dag("fraud_feature_etl", DAYS[1])
    assert str(rerun.state) == "success"
    assert _published("fraud")[DAYS[1]]["content_sha256"] == first_hash
    assert (storage.partition_dir("features", "fraud", DAYS[1]) / "_manifest.json").read_bytes() == manifest_bytes


def test_etl_dag_explicit_ds_param(airflow_db: Path, storage_root: Path) -> None:
    land_days(FRAUD, DAYS[0], DAYS[0])
    run = run_dag("fraud_feature_etl", DAYS[2], conf={"ds": DAYS[0].isoformat()})
    assert str(run.state) == "success"
    assert list(_published("fraud")) == [DAYS[0]]


def test_etl_dag_bad_data_fails_without_retry_and_quarantines(airflow_db: Path, storage_root: Path) -> None:
    land_days(FRAUD, DAYS[0], DAYS[0])
    assert str(run_dag("fraud_feature_etl", DAYS[0]).state) == "success"
    raw = Path(storage.resolve(FRAUD.source.path.format(ds=DAYS[1].isoformat())).path)
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"this is not parquet")
    run = run_dag("fraud_feature_etl", DAYS[1])
    states = task_states(run)
    assert str(run.state) == "failed"
    assert states["validate_raw_partition"] == "failed"
    assert states["publish_feature_partition"] in {"upstream_failed", "None"}
    ti = next(t for t in run.get_task_instances() if t.task_id == "validate_raw_partition")
    assert ti.try_number == 1  # AirflowFailException: no retries for bad data
    assert (storage.partition_dir("quarantine", "fraud", DAYS[1]) / "validation.json").exists()
    assert list(_published("fraud")) == [DAYS[0]]


@pytest.mark.s3
def test_etl_dag_on_s3_over_http(airflow_db: Path, s3_storage: str) -> None:
    eta = get_spec("delivery_eta")  # the CSV source, so both formats cross the S3 path
    land_days(FRAUD, DAYS[0], DAYS[1])
    land_days(eta, DAYS[0], DAYS[0])
    for day in DAYS[:2]:
        assert str(run_dag("fraud_feature_etl", day).state) == "success"
    assert str(run_dag("delivery_eta_feature_etl", DAYS[0]).state) == "success"
    root = storage.storage_root()
    assert root.protocol == "s3"
    published = _published("fraud")
    assert list(published) == DAYS[:2]
    frame = storage.read_partition(storage.partition_dir("features", "fraud", DAYS[0]))
    assert len(frame) == published[DAYS[0]]["rows"] > 0
    assert _published("delivery_eta")[DAYS[0]]["rows"] > 0
    before = published[DAYS[0]]["content_sha256"]
    assert str(run_dag("fraud_feature_etl", DAYS[0]).state) == "success"
    assert _published("fraud")[DAYS[0]]["content_sha256"] == before
    # The object listing shows only committed files: the data file and the manifest.
    names = sorted(p.name for p in storage.partition_dir("features", "fraud", DAYS[0]).iterdir())
    assert names == ["_manifest.json", f"part-{before[:16]}.parquet"]


@pytest.mark.parametrize(("policy", "expected"), [("fail", "AirflowFailException"), ("skip", "AirflowSkipException")])
def test_missing_or_empty_day_follows_the_spec(storage_root: Path, policy: str, expected: str) -> None:
    import pandas as pd
    from evergreen.etl import ingest as etl
    from evergreen.factory import data_errors_fail_fast

    spec = FRAUD.model_copy(update={"etl": FRAUD.etl.model_copy(update={"on_missing_day": policy})})
    with pytest.raises(Exception) as missing, data_errors_fail_fast(spec):
        etl.validate_raw_partition(spec, DAYS[0])
    assert type(missing.value).__name__ == expected
    assert "no raw data" in str(missing.value)

    empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in spec.raw_columns})
    path = Path(storage.resolve(spec.source.path.format(ds=DAYS[0].isoformat())).path)
    path.parent.mkdir(parents=True)
    path.write_bytes(storage.frame_to_parquet_bytes(empty))
    with pytest.raises(Exception) as no_rows, data_errors_fail_fast(spec):
        etl.validate_raw_partition(spec, DAYS[0])
    assert type(no_rows.value).__name__ == expected
    assert storage.list_partitions("features", "fraud") == {}


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_integrity_failures_never_retry_or_skip(storage_root: Path, policy: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from evergreen.etl import ingest as etl
    from evergreen.factory import data_errors_fail_fast

    spec = FRAUD.model_copy(update={"etl": FRAUD.etl.model_copy(update={"on_missing_day": policy})})
    land_days(spec, DAYS[0], DAYS[0])
    etl.run_feature_etl(spec, DAYS[0])
    directory = storage.partition_dir("features", "fraud", DAYS[0])
    data_file = next(p for p in directory.iterdir() if p.name.startswith("part-"))
    data_file.write_bytes(data_file.read_bytes()[:-10])  # truncated after publication
    with pytest.raises(AirflowFailException, match="does not match its manifest hash"), data_errors_fail_fast(spec):
        storage.read_partition(directory)
