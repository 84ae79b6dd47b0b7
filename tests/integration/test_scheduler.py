"""The feature ETL under a real Airflow 3 stack: api-server, scheduler, dag-processor, triggerer.

Backfills go through Airflow's own backfill (``POST /api/v2/backfills``, executed by the scheduler with
the LocalExecutor), bad data through a REST-triggered run. Slow: ``pytest -m scheduler``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import running_stack

from devtools.localstack import LocalStack

pytestmark = pytest.mark.scheduler

SPEC = "fraud"
ETL_DAG = f"{SPEC}_feature_etl"
DAYS = [dt.date(2026, 10, 1) + dt.timedelta(days=i) for i in range(4)]
CORRUPT_DAY = dt.date(2026, 10, 9)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    home = tmp_path_factory.mktemp("stack")
    with running_stack(home, [ETL_DAG]) as local:
        yield local
    assert not (home / "postgres" / "postmaster.pid").exists()  # the embedded server stopped with the stack


def _storage(stack: LocalStack) -> Path:
    return Path(stack.storage_root)


def _published(stack: LocalStack) -> set[str]:
    base = _storage(stack) / "features" / SPEC
    return {p.parent.name for p in base.glob("ds=*/_manifest.json")}


def _partition_dirs(stack: LocalStack) -> set[str]:
    base = _storage(stack) / "features" / SPEC
    return {p.name for p in base.glob("ds=*")} if base.exists() else set()


@pytest.fixture(scope="module")
def backfilled(stack: LocalStack) -> list[dict]:
    from evergreen.simulate import land_days
    from evergreen.spec import get_spec

    land_days(get_spec(SPEC), DAYS[0], DAYS[-1], seed=3, rows=400)
    stack.unpause(ETL_DAG)
    backfill = stack.backfill(ETL_DAG, DAYS[0], DAYS[-1])
    assert backfill["dag_id"] == ETL_DAG
    return stack.wait_for_runs(ETL_DAG, count=len(DAYS), timeout=240)


def test_backfill_runs_through_the_scheduler(stack: LocalStack, backfilled: list[dict]) -> None:
    states = {r["dag_run_id"]: (r["state"], r["run_type"]) for r in backfilled}
    assert len(backfilled) == len(DAYS), states
    assert all(state == ("success", "backfill") for state in states.values()), states
    logical_days = sorted(dt.date.fromisoformat(r["logical_date"][:10]) for r in backfilled)
    assert logical_days == DAYS
    for run in backfilled:
        tis = {ti["task_id"]: ti["state"] for ti in stack.task_instances(ETL_DAG, run["dag_run_id"])}
        assert tis == {
            "wait_for_raw_partition": "success",
            "validate_raw_partition": "success",
            "build_feature_partition": "success",
            "publish_feature_partition": "success",
        }, (run["dag_run_id"], tis)

    expected = {f"ds={d.isoformat()}" for d in DAYS}
    assert _published(stack) == expected
    assert _partition_dirs(stack) == expected  # nothing staged or half-written elsewhere


def test_corrupt_raw_data_fails_fast_and_is_quarantined(stack: LocalStack, backfilled: list[dict]) -> None:
    raw = _storage(stack) / "raw" / SPEC / f"ds={CORRUPT_DAY.isoformat()}" / "transactions.parquet"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(b"PAR1 this is not parquet \x00\xff\x13\x37" * 40)

    run = stack.trigger(ETL_DAG, logical_date=CORRUPT_DAY, run_id=f"corrupt__{CORRUPT_DAY.isoformat()}")
    (finished,) = stack.wait_for_runs(ETL_DAG, run_ids=[run["dag_run_id"]], timeout=180)
    assert finished["state"] == "failed"
    assert finished["run_type"] == "manual"

    tis = {ti["task_id"]: ti for ti in stack.task_instances(ETL_DAG, run["dag_run_id"])}
    assert tis["wait_for_raw_partition"]["state"] == "success"
    validate = tis["validate_raw_partition"]
    assert validate["state"] == "failed"
    assert validate["try_number"] == 1  # bad data is not retried (the task has retries=2)
    assert validate["max_tries"] >= 2
    assert tis["build_feature_partition"]["state"] == "upstream_failed"
    assert tis["publish_feature_partition"]["state"] == "upstream_failed"

    quarantine = _storage(stack) / "quarantine" / SPEC / f"ds={CORRUPT_DAY.isoformat()}"
    assert (quarantine / "validation.json").is_file()
    assert (quarantine / "raw" / "transactions.parquet").read_bytes() == raw.read_bytes()
    # No feature partition for the bad day; the backfilled ones are untouched.
    assert _published(stack) == {f"ds={d.isoformat()}" for d in DAYS}
    assert f"ds={CORRUPT_DAY.isoformat()}" not in _partition_dirs(stack)


def test_every_process_uses_postgresql(stack: LocalStack) -> None:
    env = stack.env()
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://evergreen:")
    assert env["MLFLOW_TRACKING_URI"].startswith("postgresql+psycopg2://")  # tasks write MLflow concurrently
    assert "sqlite" not in " ".join(env.values())
    health = stack.health()
    assert health["metadatabase"]["status"] == "healthy"
