"""The linear baseline as a served model: its exported parameters compute what scikit-learn computes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from evergreen.spec import TaskType
from evergreen.training.baseline import baseline_input, build_baseline, export_linear, predict_baseline
from evergreen.training.model import fit_feature_schema, prepare_features
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
    pipeline = build_baseline(spec, schema)
    pipeline.fit(baseline_input(prepare_features(train, schema), schema), y)
    params = json.loads(json.dumps(export_linear(pipeline, schema), sort_keys=True))  # as the served file holds it

    live = _frame(500, seed=2)
    live.loc[live.index[:20], "channel"] = "kiosk"  # unseen category
    live.loc[live.index[20:40], "score"] = np.nan  # missing where training had none
    live.loc[live.index[40:45], "empty"] = 5.0
    expected_input = baseline_input(prepare_features(live, schema), schema)
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
