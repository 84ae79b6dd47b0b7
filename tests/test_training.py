"""Window selection, feature preparation and challenger training on small synthetic feature partitions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from evergreen import storage
from evergreen.errors import DataQualityError
from evergreen.spec import SHIPPED_SPECS_DIR, FeatureType, PipelineSpec, TaskType, load_spec
from evergreen.training import (
    TrainingWindow,
    fit_feature_schema,
    load_window_frames,
    prepare_features,
    select_window,
    train_challenger,
)

START = dt.date(2026, 10, 1)


# ---------------------------------------------------------------------------------------- helpers
# Shared with test_registry.py (pytest puts this folder on sys.path).


def small_spec(name: str = "fraud", **window: int) -> PipelineSpec:
    """A shipped spec with a 14-day window and a few boosting rounds, so tests stay fast."""
    spec = load_spec(SHIPPED_SPECS_DIR / f"{name}.yaml")
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
    directory = storage.partition_dir("features", spec.name, ds)
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
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = base / "artifacts"
        artifacts.mkdir(exist_ok=True)
        mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri())


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "storage"
    monkeypatch.setenv(storage.ROOT_ENV, str(root))
    return root


# -------------------------------------------------------------------------------- window selection


def test_window_never_reads_after_as_of(store: Path) -> None:
    spec = small_spec()
    publish_days(spec, START, 20, rows=150)
    as_of = START + dt.timedelta(days=13)
    window = select_window(spec, as_of)
    assert window.partitions[-1] == as_of
    assert all(d <= as_of for d in window.partitions)
    assert window.partitions == [START + dt.timedelta(days=i) for i in range(14)]
    train, valid, holdout = load_window_frames(spec, window)
    for frame in (train, valid, holdout):
        assert frame[spec.timestamp_column].max() < pd.Timestamp(as_of + dt.timedelta(days=1), tz="UTC")
    # A shorter window override still ends at as_of.
    short = select_window(spec, as_of, window_days=8)
    assert short.start == as_of - dt.timedelta(days=7)
    assert short.partitions[0] == short.start and short.partitions[-1] == as_of


def test_split_day_lists_are_time_ordered(store: Path) -> None:
    spec = small_spec()
    days = publish_days(spec, START, 14, rows=100)
    window = select_window(spec, days[-1])
    assert window.holdout_days == days[-3:]
    assert window.validation_days == days[-5:-3]
    assert window.train_days == days[:-5]
    assert window.missing_days == []
    assert window.rows == 1400
    train, valid, holdout = load_window_frames(spec, window)
    assert (len(train), len(valid), len(holdout)) == (900, 200, 300)
    assert train[spec.timestamp_column].max() < valid[spec.timestamp_column].min()
    assert valid[spec.timestamp_column].max() < holdout[spec.timestamp_column].min()
    assert TrainingWindow.from_dict(json.loads(json.dumps(window.to_dict()))) == window


def test_data_digest_tracks_partition_content(store: Path) -> None:
    spec = small_spec()
    days = publish_days(spec, START, 14, rows=100)
    first = select_window(spec, days[-1])
    assert select_window(spec, days[-1]).data_digest == first.data_digest
    publish_day(spec, days[3], make_feature_day(spec, days[3], 100, seed=7))
    assert select_window(spec, days[-1]).data_digest != first.data_digest
    # Loading a window whose partition was republished since selection is refused.
    with pytest.raises(DataQualityError, match="republished"):
        load_window_frames(spec, first)


def test_holdout_uses_most_recent_present_days_when_days_missing(store: Path) -> None:
    spec = small_spec()
    gap = (START + dt.timedelta(days=12),)
    days = publish_days(spec, START, 14, rows=100, skip=gap)
    window = select_window(spec, START + dt.timedelta(days=13))
    assert window.missing_days == list(gap)
    assert window.holdout_days == days[-3:]
    assert gap[0] not in window.holdout_days


def test_too_many_missing_days(store: Path) -> None:
    spec = small_spec()
    skip = tuple(START + dt.timedelta(days=i) for i in (3, 5, 8))
    publish_days(spec, START, 14, rows=100, skip=skip)
    with pytest.raises(DataQualityError, match="3 days missing"):
        select_window(spec, START + dt.timedelta(days=13))


def test_too_little_data(store: Path) -> None:
    spec = small_spec()
    publish_days(spec, START, 5, rows=300)
    with pytest.raises(DataQualityError, match="need at least 7"):
        select_window(spec, START + dt.timedelta(days=4))
    publish_days(spec, START, 10, rows=50)
    with pytest.raises(DataQualityError, match="rows"):
        select_window(spec, START + dt.timedelta(days=9))


def test_row_cap_is_deterministic(store: Path) -> None:
    spec = small_spec(max_rows_per_day=100)
    publish_days(spec, START, 10, rows=300, seed=1)
    window = select_window(spec, START + dt.timedelta(days=9))
    assert window.rows == 1000
    a = load_window_frames(spec, window)
    b = load_window_frames(spec, window)
    assert [len(f) for f in a] == [500, 200, 300]
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)


# --------------------------------------------------------------------------------- feature matrix


def test_prepare_features_fixes_categories_and_casts() -> None:
    spec = small_spec()
    train = make_feature_day(spec, START, 50)
    schema = fit_feature_schema(train, {k: v.value for k, v in spec.model_features.items()})
    assert schema.categories["channel"] == sorted(train["channel"].unique())
    scoring = train.head(3).copy()
    scoring["channel"] = pd.Series(["web", "never_seen", None], dtype="str")
    scoring["card_present"] = pd.Series([True, None, False], dtype="object")
    matrix = prepare_features(scoring, schema)
    assert list(matrix.columns) == list(spec.model_features)
    assert isinstance(matrix["channel"].dtype, pd.CategoricalDtype)
    assert list(matrix["channel"].cat.categories) == schema.categories["channel"]
    assert matrix["channel"].iloc[0] == "web" and matrix["channel"].isna().tolist() == [False, True, True]
    assert matrix["card_present"].tolist()[0] == 1.0 and np.isnan(matrix["card_present"].iloc[1])
    assert matrix["is_weekend"].dtype == np.float64


# ---------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train the fraud challenger twice on the same 14 x 400-row window (module-scoped: ~10 s)."""
    base = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(storage.ROOT_ENV, str(base / "storage"))
        spec = small_spec()
        configure_mlflow(mp, base, spec.name)
        days = publish_days(spec, START, 14)
        window = select_window(spec, days[-1])
        lineage = {"dag_id": "fraud_training", "run_id": "manual__1", "try_number": "1", "reason": "test"}
        first = train_challenger(spec, window, lineage=lineage)
        second = train_challenger(spec, window, lineage=lineage)
        holdout = load_window_frames(spec, window)[2]
        model = mlflow.pyfunc.load_model(first["model_uri"])
        predictions = np.asarray(model.predict(holdout[list(spec.model_features)].head(50)))
        client = mlflow.MlflowClient()
        run = client.get_run(first["run_id"])
        baseline = client.get_run(first["baseline_run_id"])
        artifacts = {a.path for a in client.list_artifacts(first["run_id"])}
        artifacts |= {a.path for a in client.list_artifacts(first["run_id"], "plots")}
        profile = mlflow.artifacts.load_dict(f"runs:/{first['run_id']}/reference_profile.json")
        yield {"spec": spec, "window": window, "first": first, "second": second, "run": run,
               "baseline": baseline, "artifacts": artifacts, "predictions": predictions,
               "holdout": holdout, "profile": profile}


def test_metrics_in_sane_ranges(trained: dict) -> None:
    metrics = trained["first"]["metrics"]
    assert set(metrics) == {"roc_auc", "pr_auc", "log_loss", "f1", "accuracy", "brier", "ece"}
    assert 0.7 < metrics["roc_auc"] <= 1.0
    assert 0.0 < metrics["brier"] < 0.25
    assert 0.0 <= metrics["ece"] < 0.2
    assert 0.6 < trained["first"]["baseline_metrics"]["roc_auc"] <= 1.0
    json.dumps(trained["first"])  # JSON-safe for XCom


def test_same_inputs_same_metrics(trained: dict) -> None:
    assert trained["first"]["run_id"] != trained["second"]["run_id"]
    assert trained["first"]["metrics"] == trained["second"]["metrics"]
    assert trained["first"]["baseline_metrics"] == trained["second"]["baseline_metrics"]
    assert trained["first"]["data_digest"] == trained["window"].data_digest


def test_run_tags_params_and_artifacts(trained: dict) -> None:
    tags = trained["run"].data.tags
    window = trained["window"]
    assert tags["evergreen.role"] == "challenger"
    assert tags["evergreen.spec"] == "fraud"
    assert tags["evergreen.as_of"] == window.as_of.isoformat()
    assert tags["evergreen.data_digest"] == window.data_digest
    assert tags["evergreen.partitions"] == f"{window.partitions[0]}..{window.partitions[-1]} (14 days)"
    assert tags["evergreen.dag_id"] == "fraud_training"
    assert tags["evergreen.reason"] == "test"
    assert tags["evergreen.code_version"].startswith("0.")
    assert trained["baseline"].data.tags["evergreen.role"] == "baseline"
    assert trained["baseline"].data.tags["mlflow.parentRunId"] == trained["run"].info.run_id
    assert {"reference_profile.json", "window.json", "feature_schema.json", "holdout",
            "plots/feature_importance.png", "plots/holdout_performance.png"} <= trained["artifacts"]
    contexts = sorted(t.value for i in trained["run"].inputs.dataset_inputs
                      for t in i.tags if t.key == "mlflow.data.context")
    assert contexts == ["holdout", "train", "validation"]


def test_pyfunc_predicts_probabilities_on_feature_frame(trained: dict) -> None:
    predictions = trained["predictions"]
    assert predictions.shape == (50,)
    assert ((predictions >= 0) & (predictions <= 1)).all()


def test_reference_profile(trained: dict) -> None:
    profile = trained["profile"]
    assert set(profile["features"]) == set(trained["spec"].model_features)
    amount = profile["features"]["amount"]
    assert len(amount["fractions"]) == len(amount["edges"]) - 1
    assert abs(sum(amount["fractions"]) - 1.0) < 1e-9
    assert abs(sum(profile["features"]["channel"]["frequencies"].values()) - 1.0) < 1e-9
    assert profile["scores"] is not None and profile["scores_source"] == "holdout"


def test_regression_spec_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(storage.ROOT_ENV, str(tmp_path / "storage"))
    spec = small_spec("delivery_eta")
    configure_mlflow(monkeypatch, tmp_path, spec.name)
    days = publish_days(spec, START, 10, rows=200)
    result = train_challenger(spec, select_window(spec, days[-1]), lineage={})
    assert set(result["metrics"]) == {"rmse", "mae", "r2"}
    assert result["metrics"]["r2"] > 0.5
    model = mlflow.pyfunc.load_model(result["model_uri"])
    frame = make_feature_day(spec, days[-1], 20, seed=3)
    values = np.asarray(model.predict(frame[list(spec.model_features)]))
    assert values.shape == (20,) and np.isfinite(values).all()


def test_reference_profile_is_deterministic_and_capped() -> None:
    from evergreen.drift import build_reference_profile

    spec = small_spec()
    frame = make_feature_day(spec, START, 300)
    scores = np.linspace(0, 1, 300)
    a = build_reference_profile(frame, spec, scores=scores, sample_size=50, bins=5)
    b = build_reference_profile(frame, spec, scores=scores, sample_size=50, bins=5)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    amount = a["features"]["amount"]
    assert len(amount["sample"]) == 50 and len(amount["edges"]) <= 6
    assert a["features"]["card_present"]["type"] == "boolean"
    assert set(a["features"]["card_present"]["frequencies"]) <= {"True", "False"}
    nullable = a["features"]["avg_amount_30d"]
    assert 0.0 < nullable["missing_rate"] < 0.3
    assert a["scores"]["count"] == 300
