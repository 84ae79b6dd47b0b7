"""Helpers the tests share (data landing, DAG runs, XCom values, MLflow set-up). Test modules import from
here, never from each other; fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from evergreen import layout, storage
from evergreen.spec import SHIPPED_SPECS_DIR, FeatureType, PipelineSpec, TaskType, load_spec

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
START = dt.date(2026, 10, 1)  # first day of the synthetic feature partitions


# ------------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "airflow"), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def running_stack(home: Path, dag_ids: list[str], *, unpause: bool = False,
                  extra_env: dict[str, str] | None = None) -> Generator[Any, None, None]:
    """A LocalStack (its own embedded PostgreSQL) under ``home`` with ``dag_ids`` parsed; this process
    reads the stack's storage root and MLflow store. Stopped, database included, on exit."""
    from devtools.localstack import LocalStack

    storage_root = home / "storage"
    stack = LocalStack(home, storage_root, airflow_port=free_port(), dag_refresh_seconds=5, extra_env=extra_env)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVERGREEN_STORAGE_ROOT", str(storage_root))
        mp.setenv("MLFLOW_TRACKING_URI", stack.mlflow_tracking_uri)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        try:
            stack.start(wait_for_dags=dag_ids, timeout=240)
            for dag_id in dag_ids if unpause else ():
                stack.unpause(dag_id)
            yield stack
        finally:
            stack.stop()


def http_call(method: str, url: str, *, headers: Mapping[str, str] | None = None, body: Any = None,
          timeout: float = 30) -> tuple[int, bytes]:
    """A raw HTTP call (any Host header, no auth added): (status, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {}),
                   **(headers or {})}
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def signed_in_browser(airflow_url: str, username: str, password: str) -> Generator[Any, None, None]:
    """A Playwright page signed in to the Airflow UI: Debian's chromium (``apt-get install chromium``,
    scripts/ensure-services.sh), nothing downloaded."""
    import shutil

    from playwright.sync_api import sync_playwright

    if shutil.which("chromium") is None:
        from compose_config import ensure_services

        ensure_services()  # installs Debian's chromium (root), or fails saying what to install
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{airflow_url}/auth/login")
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)  # the UI's own redirect after signing in
            page.wait_for_load_state("networkidle")
            yield page
        finally:
            browser.close()


def open_evergreen(page: Any, airflow_url: str, spec: str) -> Any:
    """Browse > Evergreen in the Airflow UI's navigation, then the spec's page: the page's frame."""
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Evergreen").click()
    page.wait_for_url(f"{airflow_url}/plugin/evergreen")
    page.wait_for_load_state("networkidle")
    frame = page.frame_locator("iframe")
    frame.get_by_role("link", name=spec, exact=True).click()
    frame.locator("h1", has_text=spec).wait_for()
    return frame


# ------------------------------------------------------------------------------------------------ DAGs


def run_dag(dag_id: str, ds: dt.date | None = None, conf: dict | None = None):
    """Run a DAG from the project's dags folder with ``dag.test()``; return the finished DagRun."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag(dag_id)
    assert dag is not None, f"no DAG {dag_id}; have {sorted(bag.dag_ids)}"
    logical = dt.datetime.combine(ds, dt.time(), tzinfo=dt.UTC) if ds else None
    kwargs = {"run_conf": conf}
    if logical is not None:
        kwargs["logical_date"] = logical
    return dag.test(**kwargs)


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def xcom_value(dag_run: Any, task_id: str) -> Any:
    """The return value of ``task_id`` in a finished run (decoded when the XCom backend hands back JSON)."""
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == task_id)
    value = ti.xcom_pull(task_ids=task_id)
    return json.loads(value) if isinstance(value, str) else value


# ------------------------------------------------------------------------------------------------ data


def land_and_etl(spec: PipelineSpec, start: dt.date, end: dt.date, **simulate: Any) -> None:
    """Simulated raw days ``start..end`` landed and run through the feature ETL in this process; with a
    separate label source, the label files arrived by ``end`` published too (as the outcomes DAG of
    ``end``), and those of later arrival days already published again (a test may rewrite history)."""
    from evergreen import outcomes
    from evergreen.etl.ingest import run_feature_etl
    from evergreen.simulate import land_days

    land_days(spec, start, end, **simulate)
    day = start
    while day <= end:
        run_feature_etl(spec, day)
        day += dt.timedelta(days=1)
    if spec.labels is not None:
        outcomes.ingest_labels(spec, end)
        last = max([end, *storage.list_partitions(layout.LABELS, spec.name)])
        for i in range((last - start).days + 1):
            outcomes.publish_label_day(spec, start + dt.timedelta(days=i))


DAG_KINDS = ("feature_etl", "training", "rollback", "drift_monitor", "drift_sensor", "backtest")


def spec_dag_ids(name: str, *, outcomes: bool | None = None) -> list[str]:
    """The DAG ids the factory builds for a spec: six kinds, plus ``<spec>_outcomes`` when its labels come
    from their own source (``outcomes=None``: as the shipped spec of that name says; fraud's do)."""
    if outcomes is None:
        outcomes = load_spec(SHIPPED_SPECS_DIR / f"{name}.yaml").labels is not None
    return sorted([*(f"{name}_{kind}" for kind in DAG_KINDS), *([f"{name}_outcomes"] if outcomes else [])])


def same_day_spec(name: str = "fraud") -> PipelineSpec:
    """The shipped spec with its target in the raw day (fraud's comes from its chargeback feed otherwise):
    for the tests of what a day's own labels go through."""
    return load_spec(SHIPPED_SPECS_DIR / f"{name}.yaml").model_copy(update={"labels": None})


def small_spec(name: str = "fraud", **window: int) -> PipelineSpec:
    """A shipped spec with a 14-day window and a few boosting rounds, so tests stay fast; its labels come
    in the day's data (the shipped fraud spec's chargeback feed is :func:`late_label_spec`'s business)."""
    spec = same_day_spec(name)
    window_cfg = {"days": 14, "holdout_days": 3, "validation_days": 2, "min_days": 7,
                  "max_missing_days": 2, "min_rows": 1000, **window}
    return spec.model_copy(update={
        "window": spec.window.model_copy(update=window_cfg),
        "model": spec.model.model_copy(update={"num_boost_round": 40, "early_stopping_rounds": 5}),
    })


def make_feature_day(spec: PipelineSpec, ds: dt.date, rows: int = 400, *, seed: int = 0,
                     signal: float = 1.0) -> pd.DataFrame:
    """Feature-partition rows as the ETL writes them; the target depends on a few features."""
    rng = np.random.default_rng([seed, ds.toordinal()])
    seconds = np.sort(rng.integers(0, 86_400, size=rows))
    ts = pd.Series(pd.Timestamp(ds, tz="UTC") + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us, UTC]")
    out: dict[str, object] = {spec.entity_keys[0]: pd.Series([f"{ds:%Y%m%d}-{i:05d}" for i in range(rows)],
                                                           dtype="str")}
    out[spec.timestamp_column] = ts
    z = np.zeros(rows)
    for i, feature in enumerate(spec.features):
        if feature.type == FeatureType.NUMERIC:
            values = rng.normal(0.0, 1.0, size=rows)
            # A step, a slope and a U-shape: trees beat the linear baseline, as on real data.
            z += {0: 1.5 * (values > 0.3), 1: -0.7 * values, 2: 0.8 * values**2 - 0.8}.get(i, 0.0)
            lo = feature.min if feature.min is not None else -10.0
            hi = feature.max if feature.max is not None else 10.0
            scaled = np.clip((lo + hi) / 2 + values * (hi - lo) / 8, lo, hi)
            if feature.max_null_fraction:
                scaled[rng.random(rows) < feature.max_null_fraction / 2] = np.nan
            out[feature.name] = scaled.astype("float64")
        elif feature.type == FeatureType.CATEGORICAL:
            choices = feature.allowed_values or ["a", "b", "c"]
            idx = rng.integers(0, len(choices), size=rows)
            z += np.where(idx == 0, 0.8, 0.0)
            out[feature.name] = pd.Series(np.asarray(choices, dtype=object)[idx], dtype="str")
        else:
            flags = rng.random(rows) < 0.3
            z += np.where(flags, 0.5, 0.0)
            out[feature.name] = pd.Series(flags, dtype="boolean")
    out["event_hour"] = ts.dt.hour.astype("float64")
    out["event_day_of_week"] = ts.dt.day_of_week.astype("float64")
    out["is_weekend"] = (ts.dt.day_of_week >= 5).astype("boolean")
    z = signal * z
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        p = 1.0 / (1.0 + np.exp(-(1.5 * z - 2.0)))
        out[spec.target.name] = (rng.random(rows) < p).astype("int64")
    else:
        out[spec.target.name] = np.clip(30.0 + 6.0 * z + rng.normal(0, 2.0, size=rows), 1, 400).astype("float64")
    return pd.DataFrame(out)


def publish_day(spec: PipelineSpec, ds: dt.date, frame: pd.DataFrame) -> str:
    """Stage and publish ``frame`` as the feature partition ``ds``; return its content hash."""
    directory = storage.partition_dir(layout.FEATURES, spec.name, ds)
    data = storage.frame_to_parquet_bytes(frame)
    name = storage.stage_data_file(directory, data)
    sha = storage.sha256_bytes(data)
    storage.publish(directory, {
        "spec": spec.name, "ds": ds.isoformat(), "rows": len(frame), "content_sha256": sha,
        "files": [{"name": name, "sha256": sha, "rows": len(frame), "bytes": len(data)}],
        "schema": {c: str(t) for c, t in frame.dtypes.items()},
    })
    return sha


def publish_days(spec: PipelineSpec, start: dt.date, n: int, *, rows: int = 400, seed: int = 0,
                 skip: tuple[dt.date, ...] = (), signal: float = 1.0) -> list[dt.date]:
    days = [start + dt.timedelta(days=i) for i in range(n)]
    for ds in days:
        if ds not in skip:
            publish_day(spec, ds, make_feature_day(spec, ds, rows, seed=seed, signal=signal))
    return [d for d in days if d not in skip]


def configure_mlflow(monkeypatch: pytest.MonkeyPatch, base: Path, experiment: str) -> None:
    """SQLite tracking + registry under ``base`` and the spec's experiment with a local artifact root."""
    uri = f"sqlite:///{base}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    # MLflow keeps a process-wide URI once anyone sets one (it wins over the environment): ours is undone
    # with the test, or a later test in this worker would talk to this store.
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = base / "artifacts"
        artifacts.mkdir(exist_ok=True)
        mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri())


# --------------------------------------------------------------------------------------- raw corruptions
# Each returns a bad copy of a simulated raw day; the ETL tests and the validation tests share them.


def bad_wrong_type(raw: pd.DataFrame) -> pd.DataFrame:
    raw = raw.copy()
    raw["amount"] = raw["amount"].astype("str")
    raw.loc[3, "amount"] = "twelve"
    return raw


def bad_out_of_range(raw: pd.DataFrame) -> pd.DataFrame:
    raw = raw.copy()
    raw.loc[[5, 9], "device_risk_score"] = 7.5
    return raw


def bad_unknown_category(raw: pd.DataFrame) -> pd.DataFrame:
    raw = raw.copy()
    raw.loc[[1], "channel"] = "carrier_pigeon"
    return raw


def bad_duplicate_keys(raw: pd.DataFrame) -> pd.DataFrame:
    raw = raw.copy()
    raw.loc[10, "transaction_id"] = raw.loc[11, "transaction_id"]
    return raw


def bad_timestamp_outside_day(raw: pd.DataFrame) -> pd.DataFrame:
    raw = raw.copy()
    raw.loc[0, "event_ts"] = pd.Timestamp("2026-10-30T12:00:00Z")
    return raw


# ------------------------------------------------------------------------------------ real-table shapes


def sensor_spec_yaml(name: str, timezone: str, *, start_date: str = "2026-01-01", **sections: str) -> str:
    """A user's spec for an hourly single-series table, as written from the README: no entity key,
    naive local timestamps in ``timezone``, a ``yes``/``no`` label, integer-coded ``season`` and an
    ``operator`` column the spec does not name. ``sections`` replace top-level YAML blocks by key."""
    blocks = {
        "source": f"source: {{kind: historical, path: raw/{name}/readings.csv, format: csv}}",
        "timestamp": "timestamp_column: read_at",
        "target": "target: {name: alarm, positive_label: \"yes\", negative_label: \"no\"}",
        "features": (
            "features:\n"
            "  - {name: level, type: numeric, min: 0, max: 100}\n"
            "  - {name: season, type: categorical, allowed_values: [1, 2, 3, 4], max_null_fraction: 0.5}"),
        "window": "window: {days: 10, holdout_days: 2, validation_days: 2, min_days: 6, max_missing_days: 2, "
                  "min_rows: 100}",
        "gates": "gates: {min_lift_over_baseline: -1.0}",
        "model": "model: {num_boost_round: 20, early_stopping_rounds: 5}",
    }
    blocks.update(sections)
    return "\n".join([
        f"name: {name}", "task_type: binary_classification", "entity_keys: []",
        f"schedule: {{start_date: {start_date}, timezone: {timezone}}}",
        *blocks.values(), "",
    ])


def local_hours(timezone: str, first: dt.date, last: dt.date) -> list[str]:
    """Naive local wall-clock hours from ``first`` to ``last`` (inclusive), as a clock in ``timezone``
    shows them: the hour after a spring-forward change is missing, the repeated hour appears twice."""
    import zoneinfo

    tz = zoneinfo.ZoneInfo(timezone)
    begin = dt.datetime.combine(first, dt.time(), tzinfo=tz).astimezone(dt.UTC)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=tz).astimezone(dt.UTC)
    hours = []
    while begin < end:
        hours.append(begin.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"))
        begin += dt.timedelta(hours=1)
    return hours


def sensor_readings(timezone: str, first: dt.date, last: dt.date, *, seed: int = 0) -> pd.DataFrame:
    """Hourly readings for :func:`sensor_spec_yaml`: the alarm rings when the level is high."""
    hours = local_hours(timezone, first, last)
    rng = np.random.default_rng(seed)
    level = rng.uniform(0, 100, len(hours)).round(2)
    season = rng.integers(1, 5, len(hours)).astype(float)
    season[rng.random(len(hours)) < 0.1] = np.nan  # a missing code turns the CSV column into floats
    return pd.DataFrame({
        "read_at": hours, "level": level, "season": pd.array(season, dtype="Float64"),
        "operator": rng.choice(["ann", "bob"], len(hours)),
        "alarm": np.where(level + rng.normal(0, 10, len(hours)) > 70, "yes", "no"),
    })


def land_csv(frame: pd.DataFrame, key: str) -> Path:
    """Write ``frame`` as CSV at ``key`` under the (local) storage root, as a user lands a file."""
    path = Path(storage.at(key).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------ alert receivers


@contextlib.contextmanager
def webhook_receiver() -> Generator[tuple[int, list[dict[str, Any]]], None, None]:
    """An HTTP server on loopback that records the JSON body of every POST; yields (port, bodies)."""
    import http.server
    import threading

    bodies: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            bodies.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                           **json.loads(self.rfile.read(length))})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], bodies
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def smtp_receiver() -> Generator[tuple[int, list[Any]], None, None]:
    """An SMTP server on loopback (aiosmtpd) that keeps every message; yields (port, messages)."""
    import email
    import email.policy

    from aiosmtpd.controller import Controller

    messages: list[Any] = []

    class Keep:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
            messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            return "250 OK"

    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, messages
    finally:
        controller.stop()


# ------------------------------------------------------------------------------------------ late labels

LABELS_PATH = "raw/{spec}_labels/ds={{ds}}/labels.parquet"


def late_label_spec(name: str = "fraud", *, max_delay_days: int = 3, **window: int) -> PipelineSpec:
    """:func:`small_spec` whose labels arrive on their own, up to ``max_delay_days`` after the day."""
    from evergreen.spec import LabelsSpec, SourceSpec

    spec = small_spec(name, **window)
    labels = LabelsSpec(source=SourceSpec(kind="daily_files", path=LABELS_PATH.format(spec=spec.name), format="parquet"),
                        max_delay_days=max_delay_days)
    return spec.model_copy(update={"labels": labels})


def label_delays(rows: int, max_delay_days: int) -> np.ndarray:
    """Days after the prediction day each row's label arrives: 0..max_delay_days, and 1 in 10 arriving a
    day too late."""
    delays = np.arange(rows) % (max_delay_days + 1)
    delays[::10] = max_delay_days + 1
    return delays


def publish_late_label_days(spec: PipelineSpec, start: dt.date, n: int, *, rows: int = 400, seed: int = 0,
                            signal: float = 1.0, positives_only: bool = False) -> dict[dt.date, pd.DataFrame]:
    """Feature partitions without labels and label files by arrival day (see :func:`label_delays`; only
    the positives with ``positives_only``, as a chargeback feed); the full feature days (with their true
    labels) are returned, by day."""
    key, target = spec.entity_keys[0], spec.target.name
    by_arrival: dict[dt.date, list[pd.DataFrame]] = {}
    days = {}
    for i in range(n):
        ds = start + dt.timedelta(days=i)
        frame = make_feature_day(spec, ds, rows, seed=seed, signal=signal)
        days[ds] = frame
        publish_day(spec, ds, frame.assign(**{target: np.full(rows, np.nan)}))
        delays = label_delays(rows, spec.labels.max_delay_days)
        for delay in sorted(set(delays.tolist())):
            part = frame.loc[(delays == delay) & ((frame[target] == 1).to_numpy() | (not positives_only)), [key, target]]
            by_arrival.setdefault(ds + dt.timedelta(days=int(delay)), []).append(part)
    for arrived, parts in by_arrival.items():
        write_label_file(spec, arrived, pd.concat(parts, ignore_index=True))
    return days


def write_label_file(spec: PipelineSpec, arrived: dt.date, frame: pd.DataFrame) -> Path:
    path = Path(storage.at(spec.labels.source.path.format(ds=arrived.isoformat())).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path
