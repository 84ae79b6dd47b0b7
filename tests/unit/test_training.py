"""Window selection, feature preparation and challenger training on small synthetic feature partitions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from evergreen import settings
from evergreen.errors import DataQualityError
from evergreen.training.model import fit_feature_schema, prepare_features
from evergreen.training.train import train_challenger
from evergreen.training.window import TrainingWindow, load_window_frames, select_window
from helpers import START, configure_mlflow, make_feature_day, publish_day, publish_days, small_spec


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "storage"
    monkeypatch.setenv(settings.STORAGE_ROOT, str(root))
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
        mp.setenv(settings.STORAGE_ROOT, str(base / "storage"))
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
        artifacts |= {a.path for a in client.list_artifacts(first["run_id"], "explanations")}
        profile = mlflow.artifacts.load_dict(f"runs:/{first['run_id']}/reference_profile.json")
        shap = {role: mlflow.artifacts.load_dict(f"runs:/{run_id}/explanations/shap_summary.json")
                for role, run_id in (("xgboost", first["run_id"]), ("baseline", first["baseline_run_id"]))}
        models = {"xgboost": model, "baseline": mlflow.pyfunc.load_model(first["baseline_model_uri"])}
        yield {"spec": spec, "window": window, "first": first, "second": second, "run": run,
               "baseline": baseline, "artifacts": artifacts, "predictions": predictions,
               "holdout": holdout, "profile": profile, "shap": shap, "models": models}


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
            "plots/shap_importance.png", "plots/holdout_performance.png",
            "explanations/shap_summary.json"} <= trained["artifacts"]
    contexts = sorted(t.value for i in trained["run"].inputs.dataset_inputs
                      for t in i.tags if t.key == "mlflow.data.context")
    assert contexts == ["holdout", "train", "validation"]


def test_pyfunc_predicts_probabilities_on_feature_frame(trained: dict) -> None:
    predictions = trained["predictions"]
    assert predictions.shape == (50,)
    assert ((predictions >= 0) & (predictions <= 1)).all()


@pytest.mark.parametrize("role", ["xgboost", "baseline"])
def test_shap_values_add_up_to_the_served_score_and_are_logged(trained: dict, role: str) -> None:
    from evergreen import explain

    spec, holdout, model = trained["spec"], trained["holdout"], trained["models"][role]
    rows = holdout[list(spec.model_features)]
    values = explain.contributions(model, rows)
    assert list(values.columns) == [*spec.model_features, "__bias__"]
    # SHAP's local accuracy: per row, the values and the expected score add up to the model's log-odds.
    probability = np.clip(np.asarray(model.predict(rows), dtype=float), 1e-12, 1 - 1e-12)
    np.testing.assert_allclose(values.sum(axis=1), np.log(probability / (1 - probability)), atol=2e-4)
    summary = explain.attribution_summary(values)
    logged = trained["shap"][role]
    assert logged["rows"] == len(holdout)
    assert list(logged["mean_abs_shap"]) == list(summary["mean_abs_shap"])  # same ranking
    np.testing.assert_allclose(list(logged["mean_abs_shap"].values()), list(summary["mean_abs_shap"].values()),
                               rtol=1e-5)
    assert abs(sum(logged["shares"].values()) - 1) < 1e-9
    assert trained["profile"]["attributions"] == trained["shap"]["xgboost"]  # the drift monitor's reference
    if role == "xgboost":
        # The simulated fraud depends on the device risk score and the amount above all.
        assert set(list(logged["mean_abs_shap"])[:4]) & {"device_risk_score", "amount"}


def test_reason_codes_rank_each_row_by_absolute_shap() -> None:
    from evergreen import explain

    values = pd.DataFrame({"a": [0.5, -2.0, 0.1], "b": [-1.0, 0.3, 0.1], "c": [0.2, 0.0, 0.1],
                           "__bias__": [-3.0, -3.0, -3.0]})
    codes = explain.reason_codes(values, 2)
    assert codes["reason_1"].tolist() == ["b", "a", "a"]  # a tie keeps column order
    assert codes["reason_1_shap"].tolist() == [-1.0, -2.0, 0.1]
    assert codes["reason_2"].tolist() == ["a", "b", "b"]
    assert list(codes.columns) == ["reason_1", "reason_1_shap", "reason_2", "reason_2_shap"]


def test_attribution_drift_measures_the_shift_of_shares() -> None:
    from evergreen import explain

    reference = {"shares": {"a": 0.6, "b": 0.3, "c": 0.1}, "rows": 100}
    same = explain.attribution_drift(reference, {"shares": {"a": 0.6, "b": 0.3, "c": 0.1}, "rows": 50},
                                     threshold=0.2)
    assert same["shift"] == pytest.approx(0.0) and not same["drifted"]
    moved = explain.attribution_drift(reference, {"shares": {"a": 0.2, "b": 0.3, "c": 0.5}, "rows": 50},
                                      threshold=0.2)
    assert moved["shift"] == pytest.approx(0.4) and moved["drifted"]
    assert set(list(moved["features"])[:2]) == {"a", "c"}  # largest movers first
    assert explain.attribution_drift({}, moved, threshold=0.2)["status"].startswith("the reference profile has no")


def test_reference_profile(trained: dict) -> None:
    profile = trained["profile"]
    assert set(profile["features"]) == set(trained["spec"].model_features)
    amount = profile["features"]["amount"]
    assert len(amount["fractions"]) == len(amount["edges"]) - 1
    assert abs(sum(amount["fractions"]) - 1.0) < 1e-9
    assert abs(sum(profile["features"]["channel"]["frequencies"].values()) - 1.0) < 1e-9
    assert profile["scores"] is not None and profile["scores_source"] == "holdout"


def test_regression_spec_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.STORAGE_ROOT, str(tmp_path / "storage"))
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
    from evergreen.drift.profile import build_reference_profile

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
