"""The DAG factory: the only module that turns specs into Airflow DAGs.

Parse-time cost is kept to reading the spec files: pandas, GX, xgboost and mlflow are imported inside
tasks, and nothing here touches storage, connections or Variables until a task runs.
Each task reads its params/context, calls one library function and returns a small reference.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import zoneinfo
from collections.abc import Iterator
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from evergreen.errors import DataQualityError, MissingDataError
from evergreen.spec import PipelineSpec, load_specs

DATE_PATTERN = r"^(\d{4}-\d{2}-\d{2})?$"


def features_asset(spec: PipelineSpec) -> Asset:
    return Asset(name=f"features/{spec.name}", uri=f"evergreen://{spec.name}/features", group="evergreen")


def resolve_partition_date(
    explicit: str | None,
    *,
    data_interval_start: dt.datetime | None,
    data_interval_end: dt.datetime | None,
    logical_date: dt.datetime | None,
    run_after: dt.datetime | None,
    timezone: str,
) -> dt.date:
    """The day a run works on, for every way a run can start.

    1. an explicit ``ds`` param (UI form, REST conf, ``dags test`` with conf);
    2. the logical date: on our data-interval timetable it is the interval start for scheduled runs and
       backfills, and the date given to ``airflow dags test DAG DATE`` (whose inferred interval is the
       day *before*, so the interval must not win here);
    3. no logical date (manual or asset-triggered runs in Airflow 3): a non-empty data interval's start,
       else the last full day before ``run_after``.
    """
    if explicit:
        return dt.date.fromisoformat(explicit)
    tz = zoneinfo.ZoneInfo(timezone)
    if logical_date is not None:
        return logical_date.astimezone(tz).date()
    if data_interval_start is not None and data_interval_end is not None and data_interval_end > data_interval_start:
        return data_interval_start.astimezone(tz).date()
    if run_after is not None:
        return run_after.astimezone(tz).date() - dt.timedelta(days=1)
    raise ValueError("cannot derive a partition date: no ds param, logical date, data interval or run_after")


def partition_date_from_context(spec: PipelineSpec, param: str = "ds") -> dt.date:
    context = get_current_context()
    dag_run = context.get("dag_run")
    return resolve_partition_date(
        (context.get("params") or {}).get(param) or None,
        data_interval_start=context.get("data_interval_start"),
        data_interval_end=context.get("data_interval_end"),
        logical_date=context.get("logical_date"),
        run_after=getattr(dag_run, "run_after", None),
        timezone=spec.schedule.timezone,
    )


@contextlib.contextmanager
def data_errors_fail_fast(spec: PipelineSpec) -> Iterator[None]:
    """Bad data fails the task without retries (retrying cannot fix it); a missing day follows the spec."""
    try:
        yield
    except MissingDataError as exc:
        if spec.etl.on_missing_day == "skip":
            raise AirflowSkipException(str(exc)) from exc
        raise AirflowFailException(str(exc)) from exc
    except DataQualityError as exc:
        raise AirflowFailException(str(exc)) from exc


def _start_date(spec: PipelineSpec) -> pendulum.DateTime:
    start = spec.schedule.start_date
    return pendulum.datetime(start.year, start.month, start.day, tz=spec.schedule.timezone)


def _default_args(spec: PipelineSpec, timeout_minutes: int) -> dict[str, Any]:
    return {
        "owner": spec.owner,
        "retries": 2,
        "retry_delay": dt.timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "execution_timeout": dt.timedelta(minutes=timeout_minutes),
    }


def build_feature_etl_dag(spec: PipelineSpec) -> DAG:
    """``<spec>_feature_etl``: wait for raw data, validate (GX), build features, publish atomically."""
    features = features_asset(spec)
    source = spec.source

    @dag(
        dag_id=spec.dag_id("feature_etl"),
        description=f"Raw -> validated feature partitions for {spec.name}",
        doc_md=f"""
### Feature ETL for `{spec.name}`

{spec.description}

Each run processes **one day** (`ds`): the run's data interval for scheduled runs and backfills,
the logical date for `airflow dags test {spec.dag_id("feature_etl")} YYYY-MM-DD`, or the `ds` param.

1. `wait_for_raw_partition`: waits (reschedule mode, no worker slot held) for `{source.path}` ({source.kind}, {source.format});
2. `validate_raw_partition`: Great Expectations gate. Bad data fails the run **without retries**, the
   offending rows and the report go to `quarantine/{spec.name}/ds=.../`, and no partition is written;
3. `build_feature_partition`: typed features staged inside `features/{spec.name}/ds=.../`;
4. `publish_feature_partition`: writes `_manifest.json` last (the commit point) and emits `features/{spec.name}`.

Reruns rewrite the day byte-identically. Backfill: `airflow backfill create --dag-id {spec.dag_id("feature_etl")} --from-date A --to-date B`.
""",
        schedule=CronDataIntervalTimetable(spec.schedule.cron, timezone=spec.schedule.timezone),
        start_date=_start_date(spec),
        catchup=False,
        max_active_runs=4,
        default_args=_default_args(spec, timeout_minutes=30),
        tags=sorted({"evergreen", "etl", spec.name, *spec.tags}),
        params={
            "ds": Param(
                None,
                type=["null", "string"],
                format="date",
                pattern=DATE_PATTERN,
                title="Partition date",
                description="Day to process (YYYY-MM-DD). Empty: derived from the run's data interval.",
            )
        },
        render_template_as_native_obj=False,
    )
    def feature_etl() -> None:
        @task.sensor(
            poke_interval=spec.etl.sensor_poke_seconds,
            timeout=spec.etl.sensor_timeout_minutes * 60,
            mode="reschedule",
            soft_fail=spec.etl.on_missing_day == "skip",
            retries=0,
        )
        def wait_for_raw_partition() -> bool:
            from evergreen.etl import raw_partition_ready

            return raw_partition_ready(spec, partition_date_from_context(spec))

        @task(retries=2)
        def validate_raw_partition() -> dict[str, Any]:
            from evergreen import etl

            with data_errors_fail_fast(spec):
                return etl.validate_raw_partition(spec, partition_date_from_context(spec))

        @task
        def build_feature_partition(validation: dict[str, Any]) -> dict[str, Any]:
            from evergreen import etl

            with data_errors_fail_fast(spec):
                return etl.build_feature_partition(spec, partition_date_from_context(spec), validation)

        @task(outlets=[features])
        def publish_feature_partition(staged: dict[str, Any]) -> dict[str, Any]:
            from evergreen import etl

            published = etl.publish_feature_partition(spec, partition_date_from_context(spec), staged)
            get_current_context()["outlet_events"][features].extra = {
                "ds": published["ds"],
                "rows": published["rows"],
                "content_sha256": published["content_sha256"],
                "path": published["path"],
            }
            return published

        validation = validate_raw_partition()
        wait_for_raw_partition() >> validation
        publish_feature_partition(build_feature_partition(validation))

    return feature_etl()


def build_dags(specs: dict[str, PipelineSpec] | None = None) -> dict[str, DAG]:
    """Every DAG for every spec, keyed by dag_id."""
    dags: dict[str, DAG] = {}
    for spec in (specs or load_specs()).values():
        for built in (build_feature_etl_dag(spec),):
            dags[built.dag_id] = built
    return dags
