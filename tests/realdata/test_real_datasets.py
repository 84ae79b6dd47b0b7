"""Three real public tables, specs alone (``examples/realdata/``), through the real DAGs.

For each dataset, as a user would: land the unchanged file in the storage root, run the feature-ETL DAG
for every day of a stretch, the training DAG (gates, registration) and the drift-monitor DAG. Then check
that no row was lost (each day's published rows equal the file's rows of that local day, counted here
independently from the raw text), that labels and codes came through, and that a champion and drift
reports exist. The data are read from ``../shared/datasets`` next to the project root (or
``EVERGREEN_DATASETS_DIR``); no copy is committed. Without them the tier is skipped, saying so.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from evergreen import layout, registry, storage
from evergreen.spec import get_spec
from helpers import REPO, run_dag, task_states, xcom_value
from mlflow import MlflowClient

pytestmark = [pytest.mark.realdata, pytest.mark.timeout(900)]

DATASETS = Path(os.environ.get("EVERGREEN_DATASETS_DIR") or REPO.parent / "shared" / "datasets")
SPECS = REPO / "examples" / "realdata"
STRETCH_DAYS = 14


def _local_day(raw: pd.DataFrame, name: str) -> pd.Series:
    """The local calendar day of every raw row, from the raw text (the naive timestamps are local)."""
    if name == "beijing_pm25":
        return pd.to_datetime(raw[["year", "month", "day"]]).dt.date
    column = {"rain_au": "Date", "metro_traffic": "date_time"}[name]
    return pd.to_datetime(raw[column].str[:10]).dt.date


CASES = {
    # name: (file under the datasets folder, first day of the stretch, what the stretch holds)
    "rain_au": ("weatherAUS/weatherAUS.csv", dt.date(2016, 3, 1), "49 stations a day, Yes/No labels, nulls"),
    "metro_traffic": ("metro_interstate_traffic/Metro_Interstate_Traffic_Volume.csv", dt.date(2017, 10, 25),
                      "the 2017-11-05 fall-back day (5 rows at the repeated 01:00), duplicated hours"),
    "beijing_pm25": ("beijing_pm25/PRSA_data_2010.1.1-2014.12.31.csv", dt.date(2013, 3, 1),
                     "timestamp in four columns, missing PM2.5 readings"),
}


@pytest.fixture
def real_specs(monkeypatch: pytest.MonkeyPatch) -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {DATASETS} (set EVERGREEN_DATASETS_DIR): realdata tier not run")
    monkeypatch.setenv("EVERGREEN_SPECS_DIR", str(SPECS))
    return SPECS


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_dataset_through_the_dags(name: str, real_specs: Path, airflow_db: Path, storage_root: Path,
                                       mlflow_uri: str) -> None:
    relative, first, _ = CASES[name]
    source = DATASETS / relative
    if not source.is_file():
        pytest.skip(f"{source} is absent: realdata tier for {name} not run")
    spec = get_spec(name)
    landed = Path(storage.at(spec.source.path).path)
    landed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, landed)  # the user's file, unchanged
    days = [first + dt.timedelta(days=i) for i in range(STRETCH_DAYS)]

    raw = pd.read_csv(source, dtype=str, keep_default_na=False)  # the raw text, nothing inferred
    raw_day = _local_day(raw, name)
    for day in days:
        run = run_dag(f"{name}_feature_etl", day)
        assert str(run.state) == "success", (day, task_states(run))

    published = storage.list_partitions(layout.FEATURES, name)
    assert sorted(published) == days
    target = spec.target.name
    for day in days:
        manifest = storage.read_manifest(published[day])
        in_file = raw[raw_day == day]
        assert manifest["rows"] == len(in_file), (name, day)  # no row lost, none from another day
        missing_labels = int(in_file[target].isin(["NA", ""]).sum())
        assert manifest["target"]["missing_rows"] == missing_labels, (name, day)
        assert manifest["validation"]["read"]["extra_columns"] == [], (name, day)
        if spec.target.positive_label is not None:
            assert manifest["target"]["classes"]["1"] == int((in_file[target] == spec.target.positive_label).sum())
    if name == "metro_traffic":
        fall_back = storage.read_manifest(published[dt.date(2017, 11, 5)])["validation"]["read"]
        assert fall_back["ambiguous_local_times"] == 5 and fall_back["nonexistent_local_times"] == 0

    training = run_dag(f"{name}_training", days[-1], conf={"window_days": STRETCH_DAYS})
    assert str(training.state) == "success", task_states(training)
    decision = xcom_value(training, "promote_if_better")
    gates = xcom_value(training, "evaluate_gates")
    assert decision["kind"] == "promoted", (decision, gates["gates"])
    assert registry.alias_version(MlflowClient(), name, "champion") == decision["version"]
    assert gates["holdout_rows"] == sum(
        storage.read_manifest(published[d])["target"]["labelled_rows"] for d in days[-spec.window.holdout_days:])

    monitor = run_dag(f"{name}_drift_monitor")
    assert str(monitor.state) == "success", task_states(monitor)
    reports = [json.loads(storage.at(layout.drift_report(name, d)).read_text()) for d in days]
    assert all(isinstance(r["drift_detected"], bool) for r in reports)
    assert {r["champion_version"] for r in reports} == {decision["version"]}
