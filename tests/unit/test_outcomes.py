"""Late labels: the label book's rules (first arrival wins, duplicates, contradictions, late), training
that joins only the labels arrived by its as_of (no leakage), and outcomes with realized performance."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evergreen import layout, outcomes, storage
from evergreen.errors import DataQualityError
from evergreen.training.train import fit_challenger
from evergreen.training.window import select_window
from helpers import START, label_delays, late_label_spec, publish_late_label_days, write_label_file


def test_the_label_book_rules(storage_root: Path) -> None:
    spec = late_label_spec(max_delay_days=2)
    ds = START
    features = pd.DataFrame({"transaction_id": pd.Series(["a", "b", "c", "d"], dtype="str"),
                             "is_fraud": [np.nan] * 4})
    write_label_file(spec, ds, pd.DataFrame({"transaction_id": ["a", "b"], "is_fraud": [1, 0]}))
    # A day later: a duplicate of a, a contradiction of b (ignored: the first label wins), c on time.
    write_label_file(spec, ds + dt.timedelta(days=1), pd.DataFrame({"transaction_id": ["a", "b", "c"],
                                                                     "is_fraud": [1, 1, 1]}))
    write_label_file(spec, ds + dt.timedelta(days=3), pd.DataFrame({"transaction_id": ["d"], "is_fraud": [0]}))  # late
    published = outcomes.ingest_labels(spec, ds + dt.timedelta(days=3))
    # The first run catches up from the spec's start; a day without a file is published empty (looked at).
    assert [(p["ds"], p["rows"]) for p in published] == [
        ((ds + dt.timedelta(days=i)).isoformat(), rows) for i, rows in enumerate((2, 3, 0, 1))]
    outcomes.ingest_labels(spec, ds + dt.timedelta(days=1))  # the first arrival day, still in its window
    book = outcomes.LabelBook.load(spec, ds + dt.timedelta(days=3))
    assert (book.duplicates, book.contradictory) == (1, 1)
    joined, counts = book.attach(features, ds)
    assert joined["is_fraud"].tolist()[:3] == [1.0, 0.0, 1.0] and np.isnan(joined["is_fraud"].iloc[3])
    assert counts == {"rows": 4, "labelled": 3, "late": 1}
    assert joined[outcomes.ARRIVED].tolist()[:3] == [ds.isoformat(), ds.isoformat(), (ds + dt.timedelta(days=1)).isoformat()]
    # As of the first day only a and b are known: what a training on that day may see.
    early, counts = outcomes.LabelBook.load(spec, ds).attach(features, ds)
    assert counts["labelled"] == 2 and early["is_fraud"].notna().tolist() == [True, True, False, False]


def test_bad_label_files_are_refused_and_quarantined(storage_root: Path) -> None:
    spec = late_label_spec()
    write_label_file(spec, START, pd.DataFrame({"transaction_id": ["a", None, "c"], "is_fraud": [1, None, 2]}))
    with pytest.raises(DataQualityError, match="missing key") as err:
        outcomes.ingest_labels(spec, START)
    assert "missing label" in str(err.value)
    assert "1 rows with a label 'is_fraud' outside {0, 1} (first at row 2)" in str(err.value)  # a binary target
    report = json.loads((storage_root / layout.label_quarantine(spec.name, START) / "validation.json").read_text())
    assert report["success"] is False and len(report["failures"]) == 3
    assert START not in storage.list_partitions(layout.LABELS, spec.name)  # the days before it are published


def test_training_joins_only_the_labels_arrived_by_as_of(storage_root: Path) -> None:
    spec = late_label_spec(max_delay_days=3)
    days = publish_late_label_days(spec, START, 16)
    as_of = START + dt.timedelta(days=13)
    outcomes.ingest_labels(spec, START + dt.timedelta(days=20))  # every label file, also those after as_of
    for i in range(0, 21, 3):
        outcomes.ingest_labels(spec, START + dt.timedelta(days=i))
    window = select_window(spec, as_of)
    assert window.labels_as_of == as_of and window.labels_digest
    # Per day: the labels that arrived by as_of and within the delay; the last days are only part-labelled.
    delays = label_delays(400, 3)
    on_time = delays <= 3
    trained = fit_challenger(spec, window)
    for ds in window.holdout_days:
        known = on_time & (delays <= (as_of - ds).days)
        rows = trained.holdout.frame[trained.holdout.frame["event_ts"].dt.date == ds]
        assert len(rows) == int(known.sum()), ds
        truth = days[ds].set_index("transaction_id")["is_fraud"]
        assert (rows.set_index("transaction_id")["is_fraud"] == truth.loc[rows["transaction_id"]]).all()
    assert window.holdout_days[-1] == as_of and (delays == 0).sum() < 400
    # Labels that arrive after as_of change nothing: the same window, digest and model.
    write_label_file(spec, as_of + dt.timedelta(days=1), pd.DataFrame({
        "transaction_id": days[as_of]["transaction_id"], "is_fraud": 1 - days[as_of]["is_fraud"]}))
    outcomes.ingest_labels(spec, as_of + dt.timedelta(days=1))
    again = select_window(spec, as_of)
    assert again.data_digest == window.data_digest
    assert fit_challenger(spec, again).metrics == trained.metrics
    # A label file for an arrival day before as_of, published after the window was chosen: refused.
    write_label_file(spec, as_of - dt.timedelta(days=1), pd.DataFrame({
        "transaction_id": days[as_of - dt.timedelta(days=2)]["transaction_id"].head(5), "is_fraud": [1] * 5}))
    outcomes.ingest_labels(spec, as_of)
    with pytest.raises(DataQualityError, match="labels known as of"):
        fit_challenger(spec, window)


def test_outcomes_and_realized_performance(storage_root: Path) -> None:
    spec = late_label_spec(max_delay_days=2)
    days = publish_late_label_days(spec, START, 4, rows=200)
    rng = np.random.default_rng(0)
    for ds, frame in days.items():  # stored predictions as the scorer writes them: champion and shadow
        parts = []
        for role, version in (("champion", "1"), ("challenger", "2")):
            noise = 0.9 if role == "champion" else 2.0
            score = np.clip(frame["is_fraud"] * 0.6 + rng.uniform(0, noise, len(frame)), 0, 1)
            parts.append(frame[["transaction_id", "event_ts"]].assign(
                model_role=pd.Series(role, index=frame.index, dtype="str"),
                model_version=pd.Series(version, index=frame.index, dtype="str"), prediction=score.astype("float64")))
        predictions = pd.concat(parts, ignore_index=True)
        directory = storage.partition_dir(layout.PREDICTIONS, spec.name, ds)
        data = storage.frame_to_parquet_bytes(predictions)
        name = storage.stage_data_file(directory, data)
        storage.publish(directory, {"spec": spec.name, "ds": ds.isoformat(), "rows": len(predictions),
                                    "content_sha256": storage.sha256_bytes(data),
                                    "files": [{"name": name, "sha256": storage.sha256_bytes(data)}],
                                    "models": {"champion": "1", "challenger": "2"}})
    last = START + dt.timedelta(days=3)
    first_run = outcomes.run_outcomes(spec, last)
    assert [o["ds"] for o in first_run["outcomes"]] == [(START + dt.timedelta(days=i)).isoformat() for i in range(4)]
    manifest = storage.read_manifest(storage.partition_dir(layout.OUTCOMES, spec.name, START + dt.timedelta(days=1)))
    delays = label_delays(200, 2)
    assert manifest["labelled_rows"] == int((delays <= 2).sum())  # complete: its delay window has passed
    # Its late labels arrive on day 4: the run of day 4 is its last rewrite and counts them.
    assert manifest["late_labels"] == 0
    closing = outcomes.run_outcomes(spec, last + dt.timedelta(days=1))
    assert closing["outcomes"][0]["ds"] == (START + dt.timedelta(days=1)).isoformat()
    manifest = storage.read_manifest(storage.partition_dir(layout.OUTCOMES, spec.name, START + dt.timedelta(days=1)))
    assert manifest["late_labels"] == int((delays > 2).sum()) > 0
    assert manifest["labelled_rows"] == int((delays <= 2).sum())  # late labels are never used
    outcomes.run_outcomes(spec, last)  # back to the first run's state (reruns use labels as of their day)
    champion, shadow = manifest["models"]["champion"], manifest["models"]["challenger"]
    assert champion["version"] == "1" and champion["coverage"] == pytest.approx(manifest["labelled_rows"] / 200)
    assert champion["metrics"]["roc_auc"] > shadow["metrics"]["roc_auc"] > 0.5
    newest = storage.read_manifest(storage.partition_dir(layout.OUTCOMES, spec.name, last))
    assert newest["labelled_rows"] == int((delays == 0).sum())  # only the same-day labels so far
    report = json.loads((storage_root / layout.performance_report(spec.name)).read_text())
    assert [d["ds"] for d in report["days"]] == [o["ds"] for o in first_run["outcomes"]]
    assert report["days"][-1]["labels_as_of"] == last.isoformat()
    page = (storage_root / layout.performance_report_html(spec.name)).read_text()
    assert page.count("<polyline") == 2 and "challenger" in page
    # A rerun with the same labels is byte-identical; the realized metric pools the labelled rows.
    before = {p.name: p.read_bytes() for p in (storage_root / "outcomes").rglob("*") if p.is_file()}
    outcomes.run_outcomes(spec, last)
    assert {p.name: p.read_bytes() for p in (storage_root / "outcomes").rglob("*") if p.is_file()} == before
    realized = outcomes.realized_metric(spec, "1", last_days=2)
    assert realized["metric"] == "roc_auc" and realized["days"] == [(START + dt.timedelta(days=i)).isoformat() for i in (2, 3)]
    assert 0.5 < realized["value"] <= 1.0


def test_a_feed_of_positives_labels_a_day_once_it_matured(storage_root: Path) -> None:
    """``labels.absent_label``: a chargeback feed lists the frauds only; a day's rows take 0 once every
    arrival day of its delay window was ingested, and before that none of its labels count."""
    spec = late_label_spec(max_delay_days=2)
    spec = spec.model_copy(update={"labels": spec.labels.model_copy(update={"absent_label": 0})})
    features = pd.DataFrame({"transaction_id": pd.Series(["a", "b", "c", "d"], dtype="str"), "is_fraud": [np.nan] * 4})
    write_label_file(spec, START, pd.DataFrame({"transaction_id": ["a"], "is_fraud": [1]}))
    write_label_file(spec, START + dt.timedelta(days=2), pd.DataFrame({"transaction_id": ["b"], "is_fraud": [1]}))
    write_label_file(spec, START + dt.timedelta(days=3), pd.DataFrame({"transaction_id": ["c"], "is_fraud": [1]}))  # late
    outcomes.ingest_labels(spec, START + dt.timedelta(days=1))
    young = outcomes.LabelBook.load(spec, START + dt.timedelta(days=1))
    joined, counts = young.attach(features, START)
    assert not young.matured(START) and joined["is_fraud"].isna().all() and counts["labelled"] == 0  # a known fraud hidden too
    # As of day 2, but the run of day 2 has not ingested its files yet: the window is not closed.
    assert not outcomes.LabelBook.load(spec, START + dt.timedelta(days=2)).matured(START)
    outcomes.ingest_labels(spec, START + dt.timedelta(days=3))
    book = outcomes.LabelBook.load(spec, START + dt.timedelta(days=2))
    joined, counts = book.attach(features, START)
    assert book.matured(START) and not book.matured(START + dt.timedelta(days=1))
    assert joined["is_fraud"].tolist() == [1.0, 1.0, 0.0, 0.0]  # c's chargeback came a day too late: legitimate
    assert counts == {"rows": 4, "labelled": 4, "late": 0}


def test_a_training_window_of_a_positives_feed_ends_at_the_matured_days(storage_root: Path) -> None:
    spec = late_label_spec(max_delay_days=3, min_days=5)
    spec = spec.model_copy(update={"labels": spec.labels.model_copy(update={"absent_label": 0})})
    days = publish_late_label_days(spec, START, 14, positives_only=True)
    as_of = START + dt.timedelta(days=13)
    outcomes.ingest_labels(spec, as_of)
    window = select_window(spec, as_of)
    assert window.partitions[-1] == as_of - dt.timedelta(days=3) and window.missing_days == []  # the young ones wait
    trained = fit_challenger(spec, window)
    holdout = trained.holdout.frame
    assert len(holdout) == 400 * len(window.holdout_days)  # every row labelled: frauds, and 0 for the rest
    truth = pd.concat(days[ds] for ds in window.holdout_days).set_index("transaction_id")["is_fraud"]
    on_time = holdout.set_index("transaction_id")["is_fraud"]
    late = label_delays(400, 3) > 3
    assert int((on_time != truth.loc[on_time.index]).sum()) == int(sum(
        (days[ds]["is_fraud"].to_numpy() == 1)[late].sum() for ds in window.holdout_days))  # the late frauds only


def test_online_predictions_join_their_labels_beside_the_batch_ones(storage_root: Path) -> None:
    spec = late_label_spec(max_delay_days=1)
    days = publish_late_label_days(spec, START, 2, rows=120)
    first = days[START]
    scores = np.clip(first["is_fraud"] * 0.5 + np.random.default_rng(1).uniform(0, 0.8, len(first)), 0, 1)
    batch = first[["transaction_id", "event_ts"]].assign(
        model_role=pd.Series("champion", index=first.index, dtype="str"),
        model_version=pd.Series("1", index=first.index, dtype="str"), prediction=scores.astype("float64"))
    directory = storage.partition_dir(layout.PREDICTIONS, spec.name, START)
    data = storage.frame_to_parquet_bytes(batch)
    storage.publish(directory, {"spec": spec.name, "ds": START.isoformat(), "rows": len(batch),
                                "content_sha256": storage.sha256_bytes(data), "models": {"champion": "1"},
                                "files": [{"name": storage.stage_data_file(directory, data),
                                           "sha256": storage.sha256_bytes(data)}]})
    as_of = START + dt.timedelta(days=1)
    outcomes.run_outcomes(spec, as_of)
    out_dir = storage.partition_dir(layout.OUTCOMES, spec.name, START)
    batch_only = {p.name: p.read_bytes() for p in Path(out_dir.path).iterdir()}
    before = storage.read_manifest(out_dir)
    assert "online" not in before and outcomes.SOURCE not in storage.read_partition(out_dir).columns

    def log_online(ds: dt.date, frame: pd.DataFrame, version: str, request_id: str) -> None:
        """What `evergreen serve` writes: the rows it scored, with their version and request."""
        served = frame[["transaction_id", "event_ts"]].assign(
            prediction=np.linspace(0.1, 0.9, len(frame)), model_version=version, request_id=request_id,
            request_row=np.arange(len(frame)), served_at=pd.Timestamp("2026-10-02T09:00", tz="UTC"))
        storage.append_part(storage.partition_dir(layout.ONLINE_PREDICTIONS, spec.name, ds),
                            storage.frame_to_parquet_bytes(served), written_at=dt.datetime.now(dt.UTC))

    log_online(START, first.head(40), "2", "req-a")
    log_online(START, first.iloc[40:50], "3", "req-b")
    log_online(as_of, days[as_of].head(5), "3", "req-c")  # a day without batch predictions yet
    outcomes.run_outcomes(spec, as_of)
    manifest = storage.read_manifest(out_dir)
    joined = storage.read_partition(out_dir)
    assert manifest["models"] == before["models"] and manifest["labelled_rows"] == before["labelled_rows"]
    assert joined[outcomes.SOURCE].value_counts().to_dict() == {"batch": 120, "online": 50}
    online = joined[joined[outcomes.SOURCE] == outcomes.ONLINE]
    truth = first.set_index("transaction_id")["is_fraud"]
    labelled = online[online["is_fraud"].notna()]
    assert len(labelled) == manifest["online"]["labelled"] > 0  # by the same delay rules as the batch rows
    assert (labelled["is_fraud"].to_numpy() == truth.loc[labelled["transaction_id"]].to_numpy()).all()
    assert online["request_id"].tolist() == ["req-a"] * 40 + ["req-b"] * 10
    assert online["request_row"].tolist() == [*range(40), *range(10)] and set(online["model_role"]) == {"champion"}
    assert {v: m["rows"] for v, m in manifest["online"]["versions"].items()} == {"2": 40, "3": 10}
    assert manifest["online"]["parts"] == 2
    # The realized metric stays the batch champion's (an event scored both ways is not counted twice).
    realized = outcomes.realized_metric(spec, "1", last_days=1)
    assert realized["rows"] == before["models"]["champion"]["labelled"]
    assert outcomes.realized_metric(spec, "2", last_days=1) is None
    newest = storage.read_manifest(storage.partition_dir(layout.OUTCOMES, spec.name, as_of))
    assert newest["models"] == {} and newest["online"]["rows"] == 5 and newest["predictions_content_sha256"] is None
    # Without the online log the day is written as before, byte for byte.
    storage.remove_tree(storage.partition_dir(layout.ONLINE_PREDICTIONS, spec.name, START))
    outcomes.run_outcomes(spec, as_of)
    assert {p.name: p.read_bytes() for p in Path(out_dir.path).iterdir()} == batch_only
