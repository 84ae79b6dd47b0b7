"""Child-process side of the benchmarks: ``python -m benchmarks.worker STAGE 'JSON args'``.

Each stage imports what it needs first (timed as ``import_seconds``), then times the work itself
(``stage_seconds``) and hands both to the parent with :func:`benchmarks.measure.write_result`. The
parent measures the whole process (wall, CPU, peak RSS) from the OS.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import write_result

STAGES: dict[str, Any] = {}


def stage(fn):
    STAGES[fn.__name__] = fn
    return fn


def _spec(args: dict[str, Any]):
    from evergreen.spec import load_spec

    return load_spec(args["spec_file"])


# ------------------------------------------------------------------------------------------- ETL


@stage
def etl(args: dict[str, Any]) -> dict[str, Any]:
    """evergreen.etl.ingest.run_feature_etl: read, validate (screen; GX only if it fails), build features, publish."""
    t = time.perf_counter()
    import pandas  # noqa: F401  (what a task process imports; GX is imported only for a failing day)
    import pyarrow.parquet  # noqa: F401
    from evergreen.etl import ingest as evergreen_etl

    spec = _spec(args)
    imported = time.perf_counter() - t
    t = time.perf_counter()
    out = evergreen_etl.run_feature_etl(spec, dt.date.fromisoformat(args["ds"]))
    return {"import_seconds": imported, "stage_seconds": time.perf_counter() - t, "rows": out["rows"]}


@stage
def validate(args: dict[str, Any]) -> dict[str, Any]:
    """evergreen.etl.ingest.validate_raw_partition alone (read + the gate)."""
    t = time.perf_counter()
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from evergreen.etl import ingest as evergreen_etl

    spec = _spec(args)
    imported = time.perf_counter() - t
    t = time.perf_counter()
    out = evergreen_etl.validate_raw_partition(spec, dt.date.fromisoformat(args["ds"]))
    return {"import_seconds": imported, "stage_seconds": time.perf_counter() - t, "rows": out["rows"],
            "expectations": out["expectations"], "engine": out["engine"]}


@stage
def validate_gx(args: dict[str, Any]) -> dict[str, Any]:
    """The same gate decided by GX (what a day that fails the screen costs): read + the GX suite."""
    t = time.perf_counter()
    import great_expectations  # noqa: F401
    from evergreen.etl import ingest as evergreen_etl
    from evergreen.etl.validation import validate_frame

    spec = _spec(args)
    imported = time.perf_counter() - t
    t = time.perf_counter()
    ds = dt.date.fromisoformat(args["ds"])
    frame, _, _ = evergreen_etl.read_raw_partition(spec, ds)
    report = validate_frame(spec, ds, frame, screen=False)
    return {"import_seconds": imported, "stage_seconds": time.perf_counter() - t, "rows": report.rows,
            "expectations": report.evaluated, "engine": report.engine}


def pandas_checks(spec, ds: dt.date, frame) -> list[str]:
    """The checks of the GX suite (evergreen.etl.validation.build_suite), written directly in pandas."""
    import pandas as pd
    from evergreen.etl.validation import BOOLEAN_VALUES, partition_bounds
    from evergreen.spec import FeatureType, TaskType

    failures: list[str] = []
    absent = [c for c in spec.raw_columns if c not in frame.columns]
    if absent:
        failures.append(f"missing columns {absent}")
    exp = spec.expectations
    n = len(frame)
    if n < exp.min_rows_per_day or (exp.max_rows_per_day is not None and n > exp.max_rows_per_day):
        failures.append(f"row count {n}")
    ts = frame[spec.timestamp_column]
    if ts.isna().any():
        failures.append("null timestamps")
    if exp.timestamps_within_partition:
        start, end = partition_bounds(spec, ds)
        if ((ts < pd.Timestamp(start)) | (ts >= pd.Timestamp(end))).any():
            failures.append("timestamps outside the partition")
    for key in spec.entity_keys:
        if frame[key].isna().any():
            failures.append(f"null {key}")
    if exp.unique_keys and frame.duplicated(spec.entity_keys).any():
        failures.append("duplicate keys")
    for feature in spec.features:
        values = frame[feature.name]
        if feature.type == FeatureType.NUMERIC:
            if not pd.api.types.is_numeric_dtype(values):
                failures.append(f"{feature.name} not numeric")
                continue
            present = values.dropna()
            if (feature.min is not None and (present < feature.min).any()) or (
                    feature.max is not None and (present > feature.max).any()):
                failures.append(f"{feature.name} out of range")
        elif feature.type == FeatureType.BOOLEAN:
            if not values.dropna().isin(BOOLEAN_VALUES).all():
                failures.append(f"{feature.name} not boolean")
        elif feature.allowed_values is not None and not values.dropna().isin(feature.allowed_values).all():
            failures.append(f"{feature.name} outside allowed values")
        null_rate = float(values.isna().mean()) if n else 0.0
        if (not feature.nullable and null_rate > 0) or null_rate > feature.max_null_fraction:
            failures.append(f"{feature.name} null rate {null_rate:.3f}")
    target = frame[spec.target.name]
    if target.isna().any():
        failures.append("null target")
    if spec.task_type == TaskType.BINARY_CLASSIFICATION and not target.isin([0, 1]).all():
        failures.append("target not 0/1")
    return failures


def _read_raw(spec, ds: dt.date):
    import pandas as pd
    from evergreen import storage

    path = storage.resolve(spec.source.path.format(ds=ds.isoformat()))
    return pd.read_parquet(Path(path.path))


@stage
def pandas_validate(args: dict[str, Any]) -> dict[str, Any]:
    """The same checks as the GX gate, in plain pandas: read the raw file, check it."""
    t = time.perf_counter()
    import pyarrow.parquet  # noqa: F401
    from evergreen import storage  # noqa: F401
    from evergreen.etl import validation  # noqa: F401

    spec = _spec(args)
    imported = time.perf_counter() - t
    ds = dt.date.fromisoformat(args["ds"])
    t = time.perf_counter()
    frame = _read_raw(spec, ds)
    failures = pandas_checks(spec, ds, frame)
    return {"import_seconds": imported, "stage_seconds": time.perf_counter() - t, "rows": len(frame),
            "failures": failures}


@stage
def pandas_etl(args: dict[str, Any]) -> dict[str, Any]:
    """Plain pandas ETL of the day: read, the same checks, the same feature columns, write Parquet."""
    t = time.perf_counter()
    import pandas as pd
    import pyarrow.parquet  # noqa: F401
    from evergreen import storage  # noqa: F401
    from evergreen.etl import validation  # noqa: F401

    spec = _spec(args)
    imported = time.perf_counter() - t
    ds = dt.date.fromisoformat(args["ds"])
    t = time.perf_counter()
    frame = _read_raw(spec, ds)
    failures = pandas_checks(spec, ds, frame)
    out = frame.copy()
    ts = out[spec.timestamp_column].dt.tz_convert(spec.schedule.timezone)
    out["event_hour"] = ts.dt.hour.astype("float64")
    out["event_day_of_week"] = ts.dt.dayofweek.astype("float64")
    out["is_weekend"] = ts.dt.dayofweek >= 5
    out = out.sort_values([spec.timestamp_column, *spec.entity_keys], kind="stable")
    target = Path(args["out_dir"]) / f"features-{ds}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(target, index=False, compression="zstd")
    assert isinstance(out, pd.DataFrame)
    return {"import_seconds": imported, "stage_seconds": time.perf_counter() - t, "rows": len(out),
            "failures": failures}


# ----------------------------------------------------------------------------------------- drift


@stage
def profile(args: dict[str, Any]) -> dict[str, Any]:
    """Reference profile of the reference frame (what training logs with each model)."""
    t = time.perf_counter()
    import pandas as pd
    from evergreen.drift.profile import build_reference_profile

    spec = _spec(args)
    imported = time.perf_counter() - t
    t = time.perf_counter()
    frame = pd.read_parquet(args["reference"])
    built = build_reference_profile(frame, spec, seed=spec.model.seed)
    seconds = time.perf_counter() - t
    Path(args["out"]).write_text(json.dumps(built))
    return {"import_seconds": imported, "stage_seconds": seconds, "rows": len(frame)}


@stage
def drift(args: dict[str, Any]) -> dict[str, Any]:
    """evergreen.drift.statistics.drift_report of one day against the reference profile (read + report)."""
    t = time.perf_counter()
    import scipy.stats  # noqa: F401  (numeric_drift imports it lazily)
    from evergreen.drift.statistics import drift_report
    from evergreen.storage import parquet_frame

    spec = _spec(args)
    imported = time.perf_counter() - t
    reference = json.loads(Path(args["profile"]).read_text())
    t = time.perf_counter()
    frame = parquet_frame(args["current"])  # as the monitor reads a partition (storage.read_partition)
    report = drift_report(spec, reference, frame, champion_version=None, ds=dt.date.fromisoformat(args["ds"]))
    seconds = time.perf_counter() - t
    return {"import_seconds": imported, "stage_seconds": seconds, "rows": len(frame),
            "drift_detected": report["drift_detected"], "drifted_share": report["drifted_share"],
            "drifted_features": report["drifted_features"], "reasons": report["reasons"]}


# -------------------------------------------------------------------------------------- training


@stage
def bare_train(args: dict[str, Any]) -> dict[str, Any]:
    """The bare fit: read the window's training and validation partitions, fit the same XGBoost model.

    No evergreen import, no validation of hashes, no MLflow, no baseline, no holdout: only what any fit
    of this model on these partitions needs (concatenate in pandas, one QuantileDMatrix).
    """
    t = time.perf_counter()
    import numpy  # noqa: F401  (timed as import_seconds, as before)
    import pandas  # noqa: F401
    import xgboost  # noqa: F401
    import yaml

    imported = time.perf_counter() - t
    t = time.perf_counter()
    spec = yaml.safe_load(Path(args["spec_file"]).read_text())
    fit = _bare_fit(spec, Path(args["storage_root"]), args["train_days"], args["validation_days"])
    return {"import_seconds": imported, "stage_seconds": time.perf_counter() - t, "read_seconds": fit.read_seconds,
            "best_iteration": int(fit.booster.best_iteration), "rows": fit.rows}


# ------------------------------------------------------------------------------------------ backtest


@stage
def backtest(args: dict[str, Any]) -> dict[str, Any]:
    """evergreen backtest with one policy, ``every:1``, over ``days``: a fit per day and a scored day."""
    t = time.perf_counter()
    from evergreen import backtest as bt

    imported = time.perf_counter() - t
    t = time.perf_counter()
    spec = _spec(args)
    report = bt.run_backtest(spec, dt.date.fromisoformat(args["start"]), dt.date.fromisoformat(args["end"]),
                             bt.parse_policies("every:1"), window_days=args["window_days"])
    return {"import_seconds": imported, "stage_seconds": time.perf_counter() - t, "fits": report["fits"],
            "fit_seconds": report["fit_seconds"], "score": report["policies"]["every:1"]["score"]}


@stage
def bare_backtest(args: dict[str, Any]) -> dict[str, Any]:
    """The bare loop the backtest is compared with: per day, read the window ending the day before, fit the
    same XGBoost model (early-stopped on the same validation days) and predict the day. Nothing else."""
    import xgboost as xgb
    import yaml

    t = time.perf_counter()
    spec = yaml.safe_load(Path(args["spec_file"]).read_text())
    window = spec.get("window", {})
    holdout, validation = window.get("holdout_days", 3), window.get("validation_days", 3)
    start, end = dt.date.fromisoformat(args["start"]), dt.date.fromisoformat(args["end"])
    fits, day = 0, start - dt.timedelta(days=1)
    while day < end:
        days = [(day - dt.timedelta(days=i)).isoformat() for i in reversed(range(args["window_days"]))]
        train_days, valid_days = days[: -(holdout + validation)], days[-(holdout + validation):-holdout]
        fit = _bare_fit(spec, Path(args["storage_root"]), train_days, valid_days)
        scored = fit.read([(day + dt.timedelta(days=1)).isoformat()])
        fit.booster.predict(xgb.DMatrix(scored[0], enable_categorical=True))
        fits += 1
        day += dt.timedelta(days=1)
    return {"stage_seconds": time.perf_counter() - t, "fits": fits}


# ------------------------------------------------------------------------------------------- serving


def _request_rows(spec, frame) -> list[dict[str, Any]]:
    """Feature-partition rows as a client sends them to ``POST /predict`` (keys, event time, features)."""
    import pandas as pd

    rows = []
    for record in frame[[*spec.entity_keys, spec.timestamp_column, *(f.name for f in spec.features)]].to_dict("records"):
        row = {}
        for name, value in record.items():
            if name == spec.timestamp_column:
                row[name] = value.isoformat()
            else:
                row[name] = None if pd.isna(value) else value.item() if hasattr(value, "item") else value
        rows.append(row)
    return rows


def _free_port(low: int = 18600, high: int = 18700) -> int:
    import socket

    for port in range(low, high):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high - 1}")


@stage
def serving(args: dict[str, Any]) -> dict[str, Any]:
    """``evergreen serve`` of a freshly trained and promoted champion: latency of sequential requests over
    HTTP on loopback (one keep-alive connection), for one row and for a batch of ``batch_rows`` rows; the
    prediction log is checked to hold every row served."""
    import http.client
    import signal
    import subprocess

    import numpy as np
    from evergreen import layout, registry, storage
    from evergreen.evaluation import evaluate_challenger
    from evergreen.training.train import train_challenger
    from evergreen.training.window import select_window

    spec = _spec(args)
    t = time.perf_counter()
    window = select_window(spec, dt.date.fromisoformat(args["as_of"]), window_days=args["window_days"])
    run_id = train_challenger(spec, window, lineage={"reason": "benchmark"})["run_id"]
    decision = registry.promote_if_better(spec, run_id, evaluate_challenger(spec, run_id), dry_run=False,
                                          actor="benchmark")
    trained = time.perf_counter() - t
    day = storage.read_partition(storage.partition_dir(layout.FEATURES, spec.name, window.holdout_days[-1]))
    rows = _request_rows(spec, day)
    batch = [rows[i % len(rows)] for i in range(args["batch_rows"])]
    port = _free_port()
    env = {**os.environ, "EVERGREEN_STORAGE_ROOT": args["log_root"]}
    t = time.perf_counter()
    server = subprocess.Popen([str(Path(sys.executable).parent / "evergreen"), "serve", "--spec", spec.name,
                               "--port", str(port)], env=env, stdout=sys.stderr, stderr=subprocess.STDOUT)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with contextlib.suppress(OSError):
                conn.request("GET", "/health")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    break
            conn.close()
            if server.poll() is not None or time.perf_counter() - t > 120:
                raise RuntimeError("evergreen serve did not start")
            time.sleep(0.2)
        started = time.perf_counter() - t

        def latencies(payloads: list[Any], warmup: int) -> np.ndarray:
            out = []
            for i, payload in enumerate(payloads):
                body = json.dumps(payload)
                began = time.perf_counter()
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = response.read()
                took = time.perf_counter() - began
                if response.status != 200:
                    raise RuntimeError(f"POST /predict answered {response.status}: {answer[:500]!r}")
                if i >= warmup:
                    out.append(took * 1000.0)
            return np.asarray(out)

        t = time.perf_counter()
        warmup = args["warmup"]
        one = latencies([rows[i % len(rows)] for i in range(args["one_row_requests"] + warmup)], warmup)
        many = latencies([batch] * (args["batch_requests"] + warmup), warmup)
        measured = time.perf_counter() - t
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    served = len(one) + len(many) * len(batch) + warmup * (1 + len(batch))
    os.environ["EVERGREEN_STORAGE_ROOT"] = args["log_root"]
    logged = sum(len(storage.read_parts(path)[0]) for path in storage.list_partitions(
        layout.ONLINE_PREDICTIONS, spec.name, published_only=False).values())
    if logged != served:
        raise RuntimeError(f"the prediction log holds {logged} rows, {served} were served")
    return {"stage_seconds": measured, "train_seconds": trained, "server_start_seconds": started,
            "model_version": decision.get("version"), "candidate": decision.get("candidate"),
            "one_row_requests": len(one), "batch_requests": len(many), "batch_rows": len(batch),
            "one_row_p50_ms": float(np.percentile(one, 50)), "one_row_p99_ms": float(np.percentile(one, 99)),
            "one_row_mean_ms": float(one.mean()),
            "batch_p50_ms": float(np.percentile(many, 50)), "batch_p99_ms": float(np.percentile(many, 99)),
            "batch_rows_per_second": float(len(batch) / (np.median(many) / 1000.0)), "logged_rows": logged}


@dataclass
class _BareFit:
    booster: Any
    read: Callable[[list[str]], tuple[Any, Any]]  # days -> (model input, labels), training categories
    rows: int
    read_seconds: float


def _bare_fit(spec: dict[str, Any], storage_root: Path, train_days: list[str], valid_days: list[str]) -> _BareFit:
    """Read the training and validation days in pandas and fit the spec's XGBoost model on them."""
    import numpy as np
    import pandas as pd
    import xgboost as xgb

    root = storage_root / "features" / spec["name"]
    features = [f["name"] for f in spec["features"]] + ["event_hour", "event_day_of_week", "is_weekend"]
    categorical = [f["name"] for f in spec["features"] if f["type"] == "categorical"]
    target = spec["target"]["name"]
    sentinel = spec.get("model", {}).get("missing_values", "sentinel") == "sentinel"
    categories: dict[str, Any] = {}

    def read(days: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
        frames = []
        for ds in days:
            manifest = json.loads((root / f"ds={ds}" / "_manifest.json").read_text())
            for entry in manifest["files"]:
                frames.append(pd.read_parquet(root / f"ds={ds}" / entry["name"], columns=[*features, target]))
        frame = pd.concat(frames, ignore_index=True)
        for name in features:
            if name in categorical:
                values = frame[name].astype("category") if name not in categories else pd.Categorical(
                    frame[name], categories=categories[name])
                frame[name] = values
                if sentinel:
                    frame[name] = frame[name].cat.add_categories(["__missing__"]).fillna("__missing__")
            else:
                frame[name] = frame[name].astype("float64")
                if sentinel:
                    frame[name] = frame[name].fillna(-1e30)
        return frame[features], frame[target].to_numpy(np.float64)

    t = time.perf_counter()
    X_train, y_train = read(train_days)
    categories.update({name: X_train[name].cat.categories.drop("__missing__", errors="ignore")
                       for name in categorical})
    X_valid, y_valid = read(valid_days)
    read_seconds = time.perf_counter() - t
    model = spec.get("model", {})
    params = {"objective": "binary:logistic", "eval_metric": ["auc", "logloss"], "tree_method": "hist",
              "nthread": 4, **model.get("params", {}), "seed": model.get("seed", 42)}
    dtrain = xgb.QuantileDMatrix(X_train, label=y_train, enable_categorical=True)
    dvalid = xgb.QuantileDMatrix(X_valid, label=y_valid, ref=dtrain, enable_categorical=True)
    booster = xgb.train(params, dtrain, num_boost_round=model.get("num_boost_round", 300),
                        evals=[(dvalid, "validation")], early_stopping_rounds=model.get("early_stopping_rounds", 20),
                        verbose_eval=False)
    return _BareFit(booster=booster, read=read, rows=len(X_train), read_seconds=read_seconds)


# ------------------------------------------------------------------------------------------ parse


@stage
def parse(args: dict[str, Any]) -> dict[str, Any]:
    """Import dags/evergreen_dags.py in this fresh interpreter (what a DAG processor does per file)."""
    import runpy

    t = time.perf_counter()
    import airflow.sdk  # what every DAG file pays first; a DAG processor has it loaded already

    sdk = time.perf_counter() - t
    t = time.perf_counter()
    namespace = runpy.run_path(args["dag_file"])
    own = time.perf_counter() - t
    from evergreen.spec import load_specs

    dags = [v for v in namespace.values() if isinstance(v, airflow.sdk.DAG)]
    specs = load_specs()
    return {"stage_seconds": sdk + own, "airflow_sdk_import_seconds": sdk, "dag_file_seconds": own,
            "dags": len(dags), "specs": len(specs),
            "specs_with_labels": sum(1 for spec in specs.values() if spec.labels is not None)}


def main(argv: list[str]) -> int:
    name, raw = argv[0], argv[1] if len(argv) > 1 else "{}"
    profile_to = os.environ.get("BENCH_PROFILE")
    if profile_to:  # a separate, profiled run: where the time goes (its timings are not reported)
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(STAGES[name], json.loads(raw))
        profiler.dump_stats(profile_to)
    else:
        result = STAGES[name](json.loads(raw))
    write_result(result)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
