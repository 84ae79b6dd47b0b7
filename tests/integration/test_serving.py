"""Online serving over HTTP on loopback: ``evergreen serve`` as a process against a SQLite MLflow store.

One pair of trained models serves the whole module (a weak one promoted first, a strong one promoted during
a stream of requests, then rolled back). What the server logs is read back from the storage root and
joined to late labels by the outcomes step.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from evergreen import layout, monitoring, outcomes, registry, settings, storage
from evergreen.evaluation import evaluate_challenger
from evergreen.serving import DAY as SERVING_DAY
from evergreen.serving import (
    PayloadError,
    PredictionLog,
    PredictionLogFullError,
    RequestSchema,
    ServedModel,
    Service,
)
from evergreen.spec import FeatureSpec, FeatureType, LabelsSpec, PipelineSpec, SourceSpec
from evergreen.training.train import train_challenger
from evergreen.training.window import select_window
from helpers import (
    START,
    VENV_BIN,
    configure_mlflow,
    http_call,
    make_feature_day,
    publish_days,
    small_spec,
    write_label_file,
)
from mlflow import MlflowClient

NAME = "fraud_online"
T0 = dt.datetime(2026, 10, 15, 3, 0, tzinfo=dt.UTC)
DAY = START + dt.timedelta(days=13)  # the last feature day: its rows are what the tests send
FLUSH_ROWS = 50  # the server writes a part at 50 rows, and on shutdown (the interval is an hour)


def serving_specs() -> tuple[PipelineSpec, PipelineSpec]:
    """The spec trained (same-day labels, gates that only compare with the champion) and the one served:
    the same, with its labels from their own source, so the outcomes step can join online predictions."""
    base = small_spec()
    trained = base.model_copy(update={
        "name": NAME, "model": base.model.model_copy(update={"registered_name": NAME}),
        "gates": base.gates.model_copy(update={"absolute": {}, "min_lift_over_baseline": -1.0,
                                               "min_slice_metric": None, "max_slice_gap": None})})
    labels = LabelsSpec(source=SourceSpec(kind="daily_files", path=f"raw/{NAME}_labels/ds={{ds}}/labels.parquet"),
                        max_delay_days=3)
    return trained, trained.model_copy(update={"labels": labels})


def serving_port() -> int:
    """A free port in 18600-18699 (the range this module's servers use)."""
    for port in range(18600, 18700):
        with socket.socket() as sock:
            with contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port))
                return port
    raise RuntimeError("no free port in 18600-18699")


def request_rows(spec: PipelineSpec, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Feature-partition rows as a client sends them: keys, the event time and the spec's features."""
    rows = []
    for record in frame.to_dict("records"):
        row: dict[str, Any] = {key: record[key] for key in spec.entity_keys}
        row[spec.timestamp_column] = record[spec.timestamp_column].isoformat()
        for feature in spec.features:
            value = record[feature.name]
            if pd.isna(value):
                row[feature.name] = None
            elif feature.type == FeatureType.NUMERIC:
                row[feature.name] = float(value)
            elif feature.type == FeatureType.BOOLEAN:
                row[feature.name] = bool(value)
            else:
                row[feature.name] = str(value)
        rows.append(row)
    return rows


def post(base: str, body: Any, *, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    status, data = http_call("POST", f"{base}/predict", body=body, headers=headers)
    return status, json.loads(data)


def health(base: str) -> dict[str, Any]:
    return json.loads(http_call("GET", f"{base}/health")[1])


def wait_for(what: str, predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two trained candidates, the weak one promoted (version 1), and ``evergreen serve`` running."""
    base = tmp_path_factory.mktemp("serving")
    trained, spec = serving_specs()
    specs_dir = base / "specs"
    specs_dir.mkdir()
    (specs_dir / f"{NAME}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.STORAGE_ROOT, str(base / "storage"))
        mp.setenv(settings.CAS_SETTLE_SECONDS, "0")
        configure_mlflow(mp, base, NAME)
        days = publish_days(trained, START, 14)
        window = select_window(trained, days[-1])
        weak = trained.model_copy(update={"model": trained.model.model_copy(
            update={"num_boost_round": 2, "params": {"max_depth": 1, "eta": 0.05}})})
        runs = {"weak": train_challenger(weak, window, lineage={"reason": "test"})["run_id"],
                "strong": train_challenger(trained, window, lineage={"reason": "test"})["run_id"]}
        decision = registry.promote_if_better(trained, runs["weak"], evaluate_challenger(trained, runs["weak"]),
                                              dry_run=False, actor="test", decided_at=T0)
        assert decision["version"] == "1" and decision["kind"] == "promoted"
        port = serving_port()
        env = {**os.environ, "EVERGREEN_SPECS_DIR": str(specs_dir), "EVERGREEN_SERVING_POLL_SECONDS": "0.2",
               "EVERGREEN_SERVING_FLUSH_ROWS": str(FLUSH_ROWS), "EVERGREEN_SERVING_FLUSH_SECONDS": "3600"}
        log_path = base / "serve.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([str(VENV_BIN / "evergreen"), "serve", "--spec", NAME, "--port", str(port)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            def up() -> bool:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                with contextlib.suppress(OSError):
                    return http_call("GET", f"{url}/health", timeout=2)[0] == 200
                return False

            wait_for("the server to load version 1", up, timeout=90)
            feature_day = storage.read_partition(storage.partition_dir(layout.FEATURES, NAME, DAY))
            yield {"spec": spec, "trained": trained, "url": url, "proc": proc, "log": log_path, "runs": runs,
                   "day": feature_day, "served_rows": [], "base": base}
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)


def test_a_prediction_equals_the_registered_models_own(served: dict[str, Any]) -> None:
    spec, frame = served["spec"], served["day"].head(25)
    rows = request_rows(spec, frame)
    expected = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(frame[list(spec.model_features)])
    status, one = post(served["url"], rows[0], headers={"X-Request-ID": "first-row"})
    assert status == 200, one
    assert one["model_version"] == "1" and one["request_id"] == "first-row" and one["rows"] == 1
    assert one["scores"][0] == pytest.approx(float(expected[0]), rel=1e-12, abs=1e-15)
    status, batch = post(served["url"], rows)
    assert status == 200, batch
    assert np.allclose(batch["scores"], np.asarray(expected, dtype=float), rtol=1e-12, atol=1e-15)
    served["served_rows"] += [("first-row", rows[0]), *((batch["request_id"], row) for row in rows)]
    # A timestamp with an offset lands on its day in the spec's timezone (UTC here): 01:30+05:00 is the evening before.
    shifted = {**rows[1], spec.entity_keys[0]: "shifted-1", spec.timestamp_column: f"{DAY.isoformat()}T01:30:00+05:00"}
    status, answer = post(served["url"], shifted)
    assert status == 200, answer
    served["served_rows"].append((answer["request_id"], shifted))


def test_a_bad_payload_gets_422_naming_each_field_and_row(served: dict[str, Any]) -> None:
    spec = served["spec"]
    good, wrong, odd = request_rows(spec, served["day"].head(3))
    wrong.update(amount="12", channel="carrier_pigeon", device_risk_score=7.5)
    odd["ammount"] = odd.pop("amount")
    del odd["transaction_id"]
    odd["is_weekend"] = True
    status, body = post(served["url"], [good, wrong, odd])
    assert status == 422, body
    found = {(e["row"], e["field"]): e["error"] for e in body["errors"]}
    assert set(found) == {(1, "amount"), (1, "channel"), (1, "device_risk_score"), (2, "ammount"), (2, "amount"),
                          (2, "transaction_id"), (2, "is_weekend")}, found
    assert "must be a finite number" in found[(1, "amount")] and "allowed values" in found[(1, "channel")]
    assert "above the maximum 1" in found[(1, "device_risk_score")]
    assert "unknown field" in found[(2, "ammount")] and found[(2, "amount")] == "is required"
    assert "derived from the timestamp" in found[(2, "is_weekend")]
    assert body["errors_total"] == 7 and "7 invalid value(s) in 2 row(s)" in body["detail"]
    status, body = post(served["url"], {**good, "amount": None})  # not nullable
    assert status == 422 and body["errors"] == [{"row": 0, "field": "amount", "error": "must not be null"}]
    status, _ = http_call("POST", f"{served['url']}/predict", body=None, headers={"Content-Type": "application/json"})
    assert status == 400
    schema = json.loads(http_call("GET", f"{served['url']}/schema")[1])
    fields = {f["name"]: f for f in schema["fields"]}
    assert fields["amount"]["required"] and fields["amount"]["max"] == 100000
    assert fields["avg_amount_30d"]["nullable"] and "web" in fields["channel"]["allowed_values"]
    assert schema["derived"] == ["event_hour", "event_day_of_week", "is_weekend"] and schema["unknown_fields"] == "refused"


class Stream(threading.Thread):
    """Single-row requests back to back on one keep-alive connection, recording status and version."""

    def __init__(self, url: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.rows, self.seen, self.stop = rows, [], threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            row = self.rows[i % len(self.rows)]
            self.conn.request("POST", "/predict", body=json.dumps(row), headers={"Content-Type": "application/json"})
            response = self.conn.getresponse()
            body = json.loads(response.read())
            self.seen.append((response.status, body.get("model_version"), body.get("request_id"), row))
            i += 1

    def versions_now(self) -> str | None:
        return self.seen[-1][1] if self.seen else None


def test_promotion_and_rollback_are_followed_while_requests_flow(served: dict[str, Any]) -> None:
    trained, url = served["trained"], served["url"]
    stream = Stream(url, request_rows(served["spec"], served["day"].iloc[30:60]))
    stream.start()
    try:
        wait_for("the stream to run", lambda: len(stream.seen) > 20)
        decision = registry.promote_if_better(trained, served["runs"]["strong"],
                                              evaluate_challenger(trained, served["runs"]["strong"]),
                                              dry_run=False, actor="test", decided_at=T0 + dt.timedelta(days=1))
        assert (decision["kind"], decision["version"]) == ("promoted", "2")
        wait_for("version 2 to serve", lambda: stream.versions_now() == "2")
        promoted = health(url)
        assert promoted["model_version"] == "2" and promoted["alias_version"] == "2" and promoted["status"] == "ok"
        assert dt.datetime.fromisoformat(promoted["loaded_at"]) > T0
        wait_for("the alias to be polled after the swap", lambda: health(url)["last_alias_check_at"] > promoted["loaded_at"])
        rolled = registry.rollback(trained, actor="test", reason="serving test", decided_at=T0 + dt.timedelta(days=2))
        assert rolled["champion_after"] == "1"
        wait_for("version 1 to serve again", lambda: stream.versions_now() == "1")
        count = len(stream.seen)
        wait_for("requests after the rollback", lambda: len(stream.seen) > count + 20)
    finally:
        stream.stop.set()
        stream.join(timeout=30)
    statuses = {status for status, *_ in stream.seen}
    assert statuses == {200}, [s for s in stream.seen if s[0] != 200][:3]
    versions = [version for _, version, *_ in stream.seen]
    changes = [versions[i] for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
    assert versions[0] == "1" and changes == ["2", "1"], changes  # swapped once each way, no flapping
    served["served_rows"] += [(request_id, row) for _, _, request_id, row in stream.seen]


def test_a_tampered_version_is_refused_and_the_old_one_keeps_serving(served: dict[str, Any]) -> None:
    url, client = served["url"], MlflowClient()
    version = client.get_model_version(NAME, "2")
    model_id = version.tags.get("evergreen.model_uri", version.source).removeprefix("models:/")
    model_dir = Path(mlflow.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    target = next(p for p in (model_dir / "artifacts" / "model.ubj", model_dir / "artifacts" / "linear_model.json")
                  if p.exists())
    original = target.read_bytes()
    target.write_bytes(original + b" ")
    try:
        client.set_registered_model_alias(NAME, registry.CHAMPION, "2")  # a promotion of a tampered version
        state = wait_for("the refusal", lambda: (h := health(url))["refused_versions"] and h)
        assert "does not match its recorded sha256" in state["refused_versions"]["2"], state
        assert (state["status"], state["model_version"], state["alias_version"]) == ("degraded", "1", "2")
        status, answer = post(url, request_rows(served["spec"], served["day"].head(1))[0])
        assert status == 200 and answer["model_version"] == "1"
        served["served_rows"].append((answer["request_id"], request_rows(served["spec"], served["day"].head(1))[0]))
        assert "REFUSED fraud_online version 2 (@champion)" in served["log"].read_text()
    finally:
        target.write_bytes(original)
        client.set_registered_model_alias(NAME, registry.CHAMPION, "1")


def test_the_online_predictions_are_logged_by_event_day(served: dict[str, Any]) -> None:
    proc = served["proc"]
    assert health(served["url"])["prediction_log"]["written_parts"] >= 1  # parts of 50 rows written meanwhile
    proc.send_signal(signal.SIGTERM)  # the rest is written on shutdown
    # uvicorn exits by the signal it stopped for, once in-flight requests and the shutdown are done.
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in served["log"].read_text(), served["log"].read_text()[-3000:]
    folders = storage.list_partitions(layout.ONLINE_PREDICTIONS, NAME, published_only=False)
    assert sorted(folders) == [DAY - dt.timedelta(days=1), DAY]
    logged = {ds: storage.read_parts(path)[0] for ds, path in folders.items()}
    assert logged[DAY - dt.timedelta(days=1)]["transaction_id"].tolist() == ["shifted-1"]
    frame = pd.concat(logged.values(), ignore_index=True)
    sent = served["served_rows"]
    assert len(frame) == len(sent)  # every prediction served, none of the refused requests
    assert sorted(zip(frame["request_id"], frame["transaction_id"], strict=True)) == sorted(
        (request_id, row["transaction_id"]) for request_id, row in sent)
    assert set(frame["model_version"]) == {"1", "2"}
    assert (frame["event_ts"].dt.date == DAY).sum() == len(frame) - 1
    assert list(frame.columns[:3]) == ["transaction_id", "event_ts", "amount"]
    assert {"event_hour", "is_weekend", "prediction", "request_row", "served_at"} <= set(frame.columns)
    served["logged"] = frame


def test_the_outcome_join_picks_up_online_predictions(served: dict[str, Any]) -> None:
    spec, day = served["spec"], served["day"]
    monitoring.score_partition(spec, DAY)  # the batch predictions of the same day, by the champion (v1)
    write_label_file(spec, DAY + dt.timedelta(days=1), day[["transaction_id", "is_fraud"]])
    outcomes.run_outcomes(spec, DAY + dt.timedelta(days=1))
    directory = storage.partition_dir(layout.OUTCOMES, NAME, DAY)
    manifest = storage.read_manifest(directory)
    joined = storage.read_partition(directory)
    online = joined[joined[outcomes.SOURCE] == outcomes.ONLINE]
    batch = joined[joined[outcomes.SOURCE] == outcomes.BATCH]
    assert len(batch) == len(day) and manifest["models"]["champion"]["labelled"] == len(day)
    logged = served["logged"]
    assert len(online) == int((logged["event_ts"].dt.date == DAY).sum())
    truth = day.set_index("transaction_id")["is_fraud"]
    assert (online["is_fraud"].to_numpy() == truth.loc[online["transaction_id"]].to_numpy()).all()
    assert set(online["model_version"]) == {"1", "2"} and online["request_id"].notna().all()
    versions = manifest["online"]["versions"]
    assert versions["1"]["labelled"] + versions["2"]["labelled"] == len(online) == manifest["online"]["labelled"]
    assert 0.5 < versions["2"]["metrics"]["roc_auc"] <= 1.0


# ------------------------------------------------------------------ in-process: no server, no trained model


class FixedModel:
    """A stand-in pyfunc scoring every row the same; ``gate`` holds it inside predict until released."""

    metadata = SimpleNamespace(get_input_schema=lambda: None)

    def __init__(self, score: float, gate: tuple[threading.Event, threading.Event] | None = None) -> None:
        self.score, self.gate = score, gate

    def unwrap_python_model(self) -> FixedModel:
        return self

    def predict(self, context: Any, frame: pd.DataFrame) -> np.ndarray:
        if self.gate is not None:
            started, release = self.gate
            started.set()
            assert release.wait(30)
        return np.full(len(frame), self.score)


def some_rows(spec: PipelineSpec, n: int) -> list[dict[str, Any]]:
    return request_rows(spec, make_feature_day(spec, DAY, rows=n))


def test_a_request_finishes_on_the_model_it_started_with(storage_root: Path) -> None:
    _, spec = serving_specs()
    service = Service(spec, poll_seconds=3600, flush_rows=10**6, flush_seconds=3600, max_buffered_rows=10**6)
    started, release = threading.Event(), threading.Event()
    now = dt.datetime.now(dt.UTC)
    service.watcher.current = ServedModel("1", "run-1", FixedModel(0.25, (started, release)), now)
    body = json.dumps(some_rows(spec, 2)).encode()
    slow: dict[str, Any] = {}
    request = threading.Thread(target=lambda: slow.update(service.predict(body, "slow")))
    request.start()
    assert started.wait(30)
    service.watcher.current = ServedModel("2", "run-2", FixedModel(0.75), now)  # promoted mid-request
    assert service.predict(body, "fast")["model_version"] == "2"
    release.set()
    request.join(timeout=30)
    assert (slow["model_version"], slow["scores"]) == ("1", [0.25, 0.25])
    service.log.location = "test"
    assert service.log.flush() == 4
    logged, _ = storage.read_parts(storage.partition_dir(layout.ONLINE_PREDICTIONS, NAME, DAY))
    assert sorted(set(zip(logged["request_id"], logged["model_version"], logged["prediction"], strict=True))) == [
        ("fast", "2", 0.75), ("slow", "1", 0.25)]


def test_the_log_flushes_on_its_interval_and_keeps_rows_it_could_not_write(storage_root: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, spec = serving_specs()
    schema, log = RequestSchema(spec), PredictionLog(spec, flush_rows=10**6, flush_seconds=0.2, max_rows=4)
    log.start()
    now = dt.datetime.now(dt.UTC)
    frame = schema.parse(some_rows(spec, 3), "r1")
    log.add(frame, np.zeros(3), "1", "r1", now)
    wait_for("the interval flush", lambda: log.written_rows == 3)
    written = storage.append_part

    def unreachable(*args: Any, **kwargs: Any) -> str:
        raise OSError("storage unreachable")

    monkeypatch.setattr(storage, "append_part", unreachable)
    log.add(frame.head(2), np.zeros(2), "1", "r2", now)
    wait_for("the failed write", lambda: log.last_error == "OSError: storage unreachable")
    with pytest.raises(PredictionLogFullError, match="2 unwritten rows"):
        log.add(frame, np.zeros(3), "1", "r3", now)  # 2 + 3 > 4: refused, so never served unlogged
    monkeypatch.setattr(storage, "append_part", written)
    log.close()
    assert (log.written_rows, log.last_error) == (5, None)
    logged, names = storage.read_parts(storage.partition_dir(layout.ONLINE_PREDICTIONS, NAME, DAY))
    assert logged["request_id"].tolist() == ["r1"] * 3 + ["r2"] * 2 and len(names) == 2


def test_the_partition_day_is_the_event_day_in_the_specs_timezone() -> None:
    _, spec = serving_specs()
    spec = spec.model_copy(update={"schedule": spec.schedule.model_copy(update={"timezone": "America/New_York"})})
    row = some_rows(spec, 1)[0]
    times = ["2026-11-01T03:30:00Z",  # 23:30 the evening before in New York
             "2026-11-01T01:30:00",  # naive, local: the repeated hour of the DST change, first (EDT) pass
             "2026-10-31T23:59:59.5"]
    frame = RequestSchema(spec).parse([{**row, "event_ts": t} for t in times], "r")
    assert frame[SERVING_DAY].tolist() == [dt.date(2026, 10, 31), dt.date(2026, 11, 1), dt.date(2026, 10, 31)]
    assert frame["event_ts"].tolist() == [pd.Timestamp(t, tz="UTC") for t in (
        "2026-11-01T03:30:00", "2026-11-01T05:30:00", "2026-11-01T03:59:59.5")]
    assert frame["event_hour"].tolist() == [23.0, 1.0, 23.0] and frame["is_weekend"].tolist() == [True, True, True]


def test_an_attribute_is_optional_checked_when_given_and_logged(storage_root: Path) -> None:
    _, spec = serving_specs()
    segment = FeatureSpec(name="segment", type=FeatureType.CATEGORICAL, allowed_values=["retail", "business"],
                          nullable=False, use="attribute")
    spec = spec.model_copy(update={"features": [*spec.features, segment]})
    schema = RequestSchema(spec)
    row = {name: value for name, value in some_rows(spec, 1)[0].items() if name != "segment"}
    assert "segment" not in spec.model_features and not schema.fields["segment"].required
    with pytest.raises(PayloadError) as refused:
        schema.parse([{**row, "segment": "retail"}, {**row, "segment": "charity"}], "r")
    assert [(e["row"], e["field"]) for e in refused.value.errors] == [(1, "segment")]
    frame = schema.parse([row, {**row, "segment": "business"}], "r")
    log = PredictionLog(spec, flush_rows=10, flush_seconds=3600, max_rows=10)
    log.add(frame, np.zeros(2), "1", "r", dt.datetime.now(dt.UTC))
    assert log.flush() == 2
    logged, _ = storage.read_parts(storage.partition_dir(layout.ONLINE_PREDICTIONS, NAME, DAY))
    assert logged["segment"].isna().tolist() == [True, False] and logged["segment"].iloc[1] == "business"
