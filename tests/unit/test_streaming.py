"""Streamed training (partition by partition into a QuantileDMatrix) against the in-memory reference path.

On the same small window both paths must give the same model: identical XGBoost metrics, best iteration
and validation metrics, and (while the training days fit in the sample) the same baseline and profile.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from evergreen import settings, storage
from evergreen.spec import PipelineSpec
from evergreen.training import model, streaming, train
from evergreen.training import window as training_window
from evergreen.training.train import train_challenger
from evergreen.training.window import select_window
from helpers import START, configure_mlflow, make_feature_day, publish_day, publish_days, small_spec


def _both(spec: PipelineSpec, as_of: dt.date) -> tuple[dict, dict]:
    window = select_window(spec, as_of)
    streamed = train_challenger(spec, window, lineage={"reason": "test"})
    in_memory = train_challenger(spec, window, lineage={"reason": "test"}, streaming=False)
    return streamed, in_memory


def _assert_same_model(streamed: dict, in_memory: dict) -> None:
    assert streamed["best_iteration"] == in_memory["best_iteration"]
    assert streamed["metrics"] == pytest.approx(in_memory["metrics"], rel=1e-9, abs=1e-12)
    assert streamed["validation_metrics"] == pytest.approx(in_memory["validation_metrics"], rel=1e-9, abs=1e-12)
    assert streamed["baseline_metrics"] == pytest.approx(in_memory["baseline_metrics"], rel=1e-9, abs=1e-12)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(settings.STORAGE_ROOT, str(tmp_path / "storage"))
    monkeypatch.setenv(settings.TRAINING_SPILL_DIR, str(tmp_path / "spill"))
    (tmp_path / "spill").mkdir()
    return tmp_path


@pytest.mark.parametrize("batch_rows", [None, 170], ids=["day-batches", "sub-day-batches"])
def test_streaming_matches_in_memory_classification(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                    batch_rows: int | None) -> None:
    if batch_rows:  # each day reaches XGBoost as several batches
        monkeypatch.setattr(streaming, "BATCH_ROWS", batch_rows)
    spec = small_spec()
    configure_mlflow(monkeypatch, env, spec.name)
    days = publish_days(spec, START, 14, rows=500, seed=5)
    streamed, in_memory = _both(spec, days[-1])
    _assert_same_model(streamed, in_memory)
    assert streamed["metrics"]["roc_auc"] > 0.7
    # The booster itself is the same: identical predictions from the logged models.
    frame = make_feature_day(spec, days[-1], 200, seed=9)[list(spec.model_features)]
    a = np.asarray(mlflow.pyfunc.load_model(streamed["model_uri"]).predict(frame))
    b = np.asarray(mlflow.pyfunc.load_model(in_memory["model_uri"]).predict(frame))
    np.testing.assert_array_equal(a, b)
    # Same reference profile (the sample is the whole training set at this size).
    pa = mlflow.artifacts.load_dict(f"runs:/{streamed['run_id']}/reference_profile.json")
    pb = mlflow.artifacts.load_dict(f"runs:/{in_memory['run_id']}/reference_profile.json")
    assert json.dumps(pa, sort_keys=True) == json.dumps(pb, sort_keys=True)
    # The spill folder is gone once training is done.
    assert list((env / "spill").iterdir()) == []
    params = mlflow.get_run(streamed["run_id"]).data.params
    assert params["training.streaming"] == "True" and params["rows.train"] == str(9 * 500)


def test_streaming_matches_in_memory_regression_with_row_cap(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = small_spec("delivery_eta", max_rows_per_day=150)
    configure_mlflow(monkeypatch, env, spec.name)
    days = publish_days(spec, START, 10, rows=400, seed=2)
    streamed, in_memory = _both(spec, days[-1])
    _assert_same_model(streamed, in_memory)
    assert streamed["metrics"]["r2"] > 0.3
    params = mlflow.get_run(streamed["run_id"]).data.params
    assert params["rows.train"] == str(5 * 150) and params["rows.holdout"] == str(3 * 150)


def test_unsorted_multi_file_partition_is_read_in_canonical_order(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A day split over files in shuffled order loads like the sorted single-file day."""
    spec = small_spec()
    day = make_feature_day(spec, START, 300, seed=4)
    publish_day(spec, START, day)
    sorted_once = training_window.load_day(spec, START)
    directory = storage.partition_dir("features", spec.name, START)
    shuffled = day.sample(frac=1.0, random_state=0)
    parts = [shuffled.iloc[:120], shuffled.iloc[120:]]
    files = []
    for part in parts:
        data = storage.frame_to_parquet_bytes(part)
        files.append({"name": storage.stage_data_file(directory, data), "sha256": storage.sha256_bytes(data),
                      "rows": len(part), "bytes": len(data)})
    storage.publish(directory, {"spec": spec.name, "ds": START.isoformat(), "rows": 300,
                                "content_sha256": "split", "files": files})
    pd.testing.assert_frame_equal(training_window.load_day(spec, START), sorted_once)


def test_day_sample_is_seeded_and_a_smaller_quota_keeps_a_subset() -> None:
    spec = small_spec()
    day = make_feature_day(spec, START, 500, seed=3)
    small, large = (streaming.sample_day(day, n, seed=7, ds=START) for n in (40, 120))
    ids = spec.entity_keys[0]
    assert len(small) == 40 and len(large) == 120
    assert set(small[ids]) <= set(large[ids])
    pd.testing.assert_frame_equal(small, streaming.sample_day(day, 40, seed=7, ds=START))  # the same rows each run
    assert set(small[ids]) != set(streaming.sample_day(day, 40, seed=8, ds=START)[ids])  # the seed matters
    position = {key: i for i, key in enumerate(day[ids])}
    assert pd.Series([position[k] for k in small[ids]]).is_monotonic_increasing  # in the day's row order


def test_baseline_and_profile_use_a_bounded_sample(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = small_spec()
    configure_mlflow(monkeypatch, env, spec.name)
    monkeypatch.setattr(streaming, "SAMPLE_MAX_ROWS", 1000)
    days = publish_days(spec, START, 14, rows=400, seed=6)
    window = select_window(spec, days[-1])
    first = train_challenger(spec, window, lineage={})
    second = train_challenger(spec, window, lineage={})
    assert first["metrics"] == second["metrics"] and first["baseline_metrics"] == second["baseline_metrics"]
    params = mlflow.get_run(first["run_id"]).data.params
    assert params["rows.train"] == str(9 * 400)
    assert int(params["rows.baseline_sample"]) == 9 * (1000 * 400 // 3600)
    profile = mlflow.artifacts.load_dict(f"runs:/{first['run_id']}/reference_profile.json")
    assert profile["rows"] == int(params["rows.baseline_sample"]) and profile["sampled_from_rows"] == 3600
    assert first["baseline_metrics"]["roc_auc"] > 0.6


def test_streaming_never_concatenates_the_window(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = small_spec()
    configure_mlflow(monkeypatch, env, spec.name)
    days = publish_days(spec, START, 12, rows=300, seed=8)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the streaming path must not load the whole window")

    monkeypatch.setattr(training_window, "load_window_frames", refuse)
    monkeypatch.setattr(train, "in_memory_training_data", refuse)
    loaded: list[dt.date] = []
    real_load_day = training_window.load_day

    def counting_load_day(spec_: PipelineSpec, ds: dt.date, expected_sha: str | None = None) -> pd.DataFrame:
        loaded.append(ds)
        return real_load_day(spec_, ds, expected_sha)

    monkeypatch.setattr(streaming, "load_day", counting_load_day)  # the training and validation days
    monkeypatch.setattr(train, "load_day", counting_load_day)  # the holdout days
    selected = select_window(spec, days[-1])
    result = train_challenger(spec, selected, lineage={})
    assert result["metrics"]["roc_auc"] > 0.6
    # Each day is prepared once (XGBoost's later passes read the spilled matrices), never twice.
    assert sorted(loaded) == sorted(selected.partitions)


def test_republished_partition_fails_the_streamed_run(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evergreen.errors import DataQualityError

    spec = small_spec()
    configure_mlflow(monkeypatch, env, spec.name)
    days = publish_days(spec, START, 12, rows=200)
    window = select_window(spec, days[-1])
    publish_day(spec, days[2], make_feature_day(spec, days[2], 200, seed=11))
    with pytest.raises(DataQualityError, match="republished"):
        train_challenger(spec, window, lineage={})


def test_missing_value_encodings(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default "sentinel": XGBoost gets a dense matrix (no NaN); "native" keeps NaN. Both paths agree in
    each mode, the logged model encodes what it is given at serving time, and the quality is close."""
    sentinel = small_spec()
    native = sentinel.model_copy(update={"model": sentinel.model.model_copy(update={"missing_values": "native"})})
    assert sentinel.model.missing_values == "sentinel"
    configure_mlflow(monkeypatch, env, sentinel.name)
    days = publish_days(sentinel, START, 14, rows=500, seed=5)
    results = {}
    for spec in (sentinel, native):
        streamed, in_memory = _both(spec, days[-1])
        _assert_same_model(streamed, in_memory)
        results[spec.model.missing_values] = streamed
    assert abs(results["sentinel"]["metrics"]["roc_auc"] - results["native"]["metrics"]["roc_auc"]) < 0.02

    frame = make_feature_day(sentinel, days[-1], 200, seed=9)[list(sentinel.model_features)]
    numeric = next(n for n, k in sentinel.model_features.items() if k == "numeric")
    categorical = next(n for n, k in sentinel.model_features.items() if k == "categorical")
    frame.loc[frame.index[:20], numeric] = np.nan
    frame.loc[frame.index[20:40], categorical] = "never_seen_in_training"
    fitted = model.fit_feature_schema(frame, {k: v.value for k, v in sentinel.model_features.items()},
                                         missing="sentinel")
    encoded = model.xgboost_input(model.prepare_features(frame, fitted), fitted)
    assert not encoded.isna().any().any()
    assert (encoded[numeric].iloc[:20] == model.MISSING_VALUE).all()
    assert model.FeatureSchema.from_dict(fitted.to_dict()) == fitted
    legacy = {k: v for k, v in fitted.to_dict().items() if k != "missing"}
    assert model.FeatureSchema.from_dict(legacy).missing == "native"  # models logged before the option
    for mode, result in results.items():
        served = mlflow.pyfunc.load_model(result["model_uri"])
        assert served.unwrap_python_model()._schema.missing == mode  # the served model encodes as trained
        pred = np.asarray(served.predict(frame))
        assert np.isfinite(pred).all() and len(pred) == len(frame), mode
