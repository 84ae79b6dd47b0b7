"""Data the shipped simulator never produces: a user spec (from EVERGREEN_SPECS_DIR) over a CSV with a
constant column, integer-coded categories, 0/1 booleans, missing categories, missing and partial days,
run end to end through ETL, training, gates, scoring and drift."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from evergreen import evaluation, monitoring, registry, storage
from evergreen.etl import ingest as etl
from evergreen.spec import load_spec
from evergreen.training.train import train_challenger
from evergreen.training.window import select_window
from helpers import run_dag, task_states

START = dt.date(2026, 3, 1)
DAYS = 16
MISSING = {START + dt.timedelta(days=5)}
PARTIAL = START + dt.timedelta(days=9)

SPEC = {
    "name": "odd_regression",
    "task_type": "regression",
    "source": {"kind": "daily_files", "path": "landing/odd/{ds}.csv", "format": "csv"},
    "entity_keys": ["store", "sku"],
    "timestamp_column": "sold_at",
    "target": {"name": "units"},
    "features": [
        {"name": "price", "type": "numeric", "min": 0},
        {"name": "constant_flag", "type": "numeric"},
        {"name": "region_code", "type": "categorical", "max_null_fraction": 0.2},
        {"name": "promo", "type": "boolean"},
    ],
    "schedule": {"start_date": START.isoformat(), "timezone": "Europe/Berlin"},
    "expectations": {"min_rows_per_day": 5},
    "window": {"days": 16, "holdout_days": 2, "validation_days": 2, "min_days": 8, "max_missing_days": 2,
               "min_rows": 200},
    "model": {"num_boost_round": 30, "early_stopping_rounds": 5, "params": {"max_depth": 3}},
    "gates": {"primary_metric": "rmse", "absolute": {"r2": 0.3}, "min_lift_over_baseline": -1.0,
              "slice_feature": "region_code", "min_slice_rows": 5},
}


def _day(ds: dt.date, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(ds.toordinal())
    price = rng.uniform(1, 20, rows).round(2)
    region = rng.integers(10, 14, rows).astype(object)
    region[rng.random(rows) < 0.1] = None  # missing categories
    promo = rng.integers(0, 2, rows)
    units = np.maximum(0, 40 - 1.5 * price + 8 * promo + rng.normal(0, 2, rows)).round(1)
    local = pd.Timestamp(ds).tz_localize("Europe/Berlin") + pd.to_timedelta(rng.integers(0, 86_400, rows), unit="s")
    return pd.DataFrame({
        "store": rng.integers(1, 5, rows),  # integer keys, a compound key
        "sku": [f"s{i}" for i in range(rows)],
        "sold_at": local.tz_localize(None).astype(str),  # naive local time
        "price": price,
        "constant_flag": 1,
        "region_code": region,
        "promo": promo,
        "units": units,
    })


@pytest.fixture
def odd_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage_root: Path):
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "odd.yaml").write_text(yaml.safe_dump(SPEC))
    monkeypatch.setenv("EVERGREEN_SPECS_DIR", str(folder))
    spec = load_spec(folder / "odd.yaml")
    for i in range(DAYS):
        ds = START + dt.timedelta(days=i)
        if ds in MISSING:
            continue
        path = Path(storage.resolve(spec.source.path.format(ds=ds.isoformat())).path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _day(ds, 12 if ds == PARTIAL else 120).to_csv(path, index=False)
    return spec


@pytest.mark.slow
def test_odd_data_end_to_end(airflow_db: Path, odd_spec, mlflow_uri: str) -> None:
    spec = odd_spec
    # The user's spec gets its DAGs; the first day goes through the real DAG.
    run = run_dag("odd_regression_feature_etl", START)
    assert str(run.state) == "success", task_states(run)
    for i in range(1, DAYS):
        ds = START + dt.timedelta(days=i)
        if ds not in MISSING:
            etl.run_feature_etl(spec, ds)
    frame = storage.read_partition(storage.partition_dir("features", spec.name, START))
    assert pd.api.types.is_string_dtype(frame["region_code"]) and frame["region_code"].isna().any()
    assert pd.api.types.is_bool_dtype(frame["promo"])
    assert set(frame["store"]) <= {"1", "2", "3", "4"}
    assert storage.read_manifest(storage.partition_dir("features", spec.name, PARTIAL))["rows"] == 12

    window = select_window(spec, START + dt.timedelta(days=DAYS - 1))
    assert window.missing_days == sorted(MISSING)
    trained = train_challenger(spec, window, lineage={"reason": "manual"})
    assert trained["metrics"]["r2"] > 0.5
    report = evaluation.evaluate_challenger(spec, trained["run_id"])
    decision = registry.promote_if_better(spec, trained["run_id"], report, dry_run=False, actor="test")
    assert decision["kind"] == "promoted", decision

    drift = monitoring.monitor_partition(spec, START + dt.timedelta(days=DAYS - 1))
    assert drift["drift_detected"] is False, drift["reasons"]
    stored = monitoring.all_reports(spec)
    assert [r["ds"] for r in stored] == [(START + dt.timedelta(days=DAYS - 1)).isoformat()]
