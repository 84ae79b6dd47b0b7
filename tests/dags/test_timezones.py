"""``airflow dags test <spec>_feature_etl DATE`` lands on DATE in time zones west and east of UTC, on both
daylight-saving days, through the real DAG (``dag.test()`` with the logical date the CLI gives: 00:00 UTC)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from evergreen import layout, storage
from evergreen.spec import get_spec
from helpers import land_csv, run_dag, sensor_readings, sensor_spec_yaml, task_states

ZONES = {
    "ny": ("America/New_York", dt.date(2026, 11, 1)),  # fall back: 25 local hours
    "sydney": ("Australia/Sydney", dt.date(2026, 10, 4)),  # spring forward: 23 local hours
}


@pytest.fixture
def zone_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    for name, (timezone, _) in ZONES.items():
        (folder / f"{name}.yaml").write_text(sensor_spec_yaml(name, timezone))
    monkeypatch.setenv("EVERGREEN_SPECS_DIR", str(folder))
    return folder


@pytest.mark.parametrize("name", sorted(ZONES))
def test_dags_test_date_is_the_partition_in_every_timezone(airflow_db: Path, storage_root: Path,
                                                           zone_specs: Path, name: str) -> None:
    timezone, day = ZONES[name]
    spec = get_spec(name)
    raw = sensor_readings(timezone, day - dt.timedelta(days=2), day + dt.timedelta(days=2))
    land_csv(raw, spec.source.path)
    run = run_dag(f"{name}_feature_etl", day)
    assert str(run.state) == "success", task_states(run)
    published = storage.list_partitions(layout.FEATURES, name)
    assert list(published) == [day]  # not the day before (west) or after (east)
    manifest = storage.read_manifest(published[day])
    assert manifest["rows"] == sum(1 for h in raw.read_at if h.startswith(day.isoformat()))
    assert manifest["rows"] == (25 if name == "ny" else 23)
