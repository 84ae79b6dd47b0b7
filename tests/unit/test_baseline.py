"""The linear baseline as a served model: its numpy transform and exported parameters compute what the
equivalent scikit-learn pipeline computes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from evergreen.spec import TaskType
from evergreen.training.baseline import fit_baseline, predict_baseline
from evergreen.training.model import FeatureSchema, fit_feature_schema, prepare_features
from helpers import small_spec


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 30.0, rows)
    amount[rng.random(rows) < 0.1] = np.nan  # gaps: the imputer adds a missing indicator
    return pd.DataFrame({
        "amount": amount,
        "score": rng.normal(0, 1, rows),
        "empty": np.full(rows, np.nan),  # empty in training: imputed with 0 (keep_empty_features)
        "flag": rng.random(rows) < 0.3,
        "channel": pd.array(rng.choice(["web", "app", "pos", None], rows), dtype="str"),
    })


def _sklearn_pipeline(task: TaskType, schema: FeatureSchema) -> object:
    """The scikit-learn pipeline the numpy transform reproduces (and the baseline was fitted with before)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in schema.columns if schema.kinds[c] != "categorical"]
    categorical = [c for c in schema.columns if schema.kinds[c] == "categorical"]
    features = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                          ("scale", StandardScaler())]), numeric),
        ("cat", Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                          ("onehot", OneHotEncoder(handle_unknown="ignore"))]), categorical),
    ])
    model = LogisticRegression(max_iter=2000) if task == TaskType.BINARY_CLASSIFICATION else Ridge(alpha=1.0)
    return Pipeline([("features", features), ("model", model)])


def _sklearn_input(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Categoricals as object columns with NaN: what SimpleImputer/OneHotEncoder handle everywhere."""
    out = prepare_features(frame, schema)
    for name in schema.columns:
        if schema.kinds[name] == "categorical":
            out[name] = np.asarray(out[name].astype(object).where(out[name].notna(), np.nan), dtype=object)
    return out


@pytest.mark.parametrize("task", [TaskType.BINARY_CLASSIFICATION, TaskType.REGRESSION])
def test_exported_baseline_predicts_like_sklearn(task: TaskType) -> None:
    spec = small_spec("fraud")
    spec = spec.model_copy(update={"task_type": task})
    features = {"amount": "numeric", "score": "numeric", "empty": "numeric", "flag": "boolean",
                "channel": "categorical"}
    train = _frame(2_000, seed=1)
    schema = fit_feature_schema(train, features)
    y = (train["score"] + (train["channel"] == "web") > 0.5).to_numpy(dtype=float)
    if task == TaskType.REGRESSION:
        y = 3.0 * train["score"].to_numpy() + np.nan_to_num(train["amount"].to_numpy()) / 50.0
    pipeline = _sklearn_pipeline(task, schema)
    pipeline.fit(_sklearn_input(train, schema), y)
    params = json.loads(json.dumps(fit_baseline(spec, schema, train, y), sort_keys=True))  # as the served file holds it
    # The numpy transform learnt what scikit-learn's learnt.
    imputer = pipeline.named_steps["features"].named_transformers_["num"].named_steps["impute"]
    scaler = pipeline.named_steps["features"].named_transformers_["num"].named_steps["scale"]
    encoder = pipeline.named_steps["features"].named_transformers_["cat"].named_steps["onehot"]
    np.testing.assert_allclose(params["medians"], np.nan_to_num(imputer.statistics_), rtol=0, atol=0)
    np.testing.assert_allclose(params["mean"], scaler.mean_, rtol=1e-12, atol=0)  # summation order
    np.testing.assert_allclose(params["scale"], scaler.scale_, rtol=1e-12, atol=0)
    assert params["categorical"] == [["channel", [str(c) for c in encoder.categories_[0]]]]
    np.testing.assert_allclose(params["coef"], pipeline.named_steps["model"].coef_.reshape(-1), rtol=1e-9, atol=1e-9)

    live = _frame(500, seed=2)
    live.loc[live.index[:20], "channel"] = "kiosk"  # unseen category
    live.loc[live.index[20:40], "score"] = np.nan  # missing where training had none
    live.loc[live.index[40:45], "empty"] = 5.0
    expected_input = _sklearn_input(live, schema)
    if task == TaskType.BINARY_CLASSIFICATION:
        # sklearn cannot score NaN in a column that had no gaps in training: compare where it can.
        ok = live["score"].notna().to_numpy()
        expected = pipeline.predict_proba(expected_input[ok])[:, 1]
        got = predict_baseline(params, live, schema)[ok]
        assert params["link"] == "logistic" and params["estimator"] == "LogisticRegression"
    else:
        ok = live["score"].notna().to_numpy()
        expected = pipeline.predict(expected_input[ok])
        got = predict_baseline(params, live, schema)[ok]
        assert params["link"] == "identity" and params["estimator"] == "Ridge"
    assert params["indicators"] == ["amount", "empty"]  # the columns that had gaps in training
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert len(np.unique(np.round(got, 6))) > 50
    # A missing value where training had none is imputed with the median, not NaN.
    assert np.isfinite(predict_baseline(params, live, schema)).all()


def test_high_cardinality_categorical_fits_sparse_and_scores_without_the_one_hot_matrix() -> None:
    """A categorical of thousands of values (a merchant or postcode id): the fit's design is sparse, as
    scikit-learn stacks it, and scoring and SHAP look coefficients up instead of building rows x values."""
    from evergreen.training.model import linear_contributions, linear_design

    spec = small_spec("fraud")
    rng = np.random.default_rng(3)
    rows = 6_000
    merchant = rng.integers(0, 3_000, rows)
    train = pd.DataFrame({"amount": rng.gamma(2.0, 30.0, rows),
                          "merchant": pd.array([f"m{m:04d}" for m in merchant], dtype="str")})
    y = ((merchant % 7 == 0) | (train["amount"].to_numpy() > 90)).astype(float)
    features = {"amount": "numeric", "merchant": "categorical"}
    schema = fit_feature_schema(train, features)
    params = json.loads(json.dumps(fit_baseline(spec, schema, train, y)))
    design = linear_design(params, prepare_features(train, schema))
    assert design.format == "csr" and design.shape == (rows, 1 + len(params["categorical"][0][1]))

    pipeline = _sklearn_pipeline(TaskType.BINARY_CLASSIFICATION, schema)
    pipeline.fit(_sklearn_input(train, schema), y)
    live = train.sample(500, random_state=0).reset_index(drop=True)
    live.loc[:9, "merchant"] = "never-seen"
    got = predict_baseline(params, live, schema)
    np.testing.assert_allclose(got, pipeline.predict_proba(_sklearn_input(live, schema))[:, 1], rtol=1e-7, atol=1e-9)
    # SHAP's local accuracy through the lookup: the values and the expected score add up to the log-odds.
    values = linear_contributions(params, prepare_features(live, schema), schema.columns)
    np.testing.assert_allclose(values.sum(axis=1), np.log(got / (1 - got)), rtol=1e-9, atol=1e-9)
