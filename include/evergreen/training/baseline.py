"""The baseline every challenger must beat: a linear model (logistic or ridge) on the same features.

It sees the model matrix of :func:`evergreen.training.model.prepare_features`, imputed and scaled (numeric)
or one-hot encoded (categorical), and is fitted on a bounded, hash-based sample of the training days.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from evergreen.spec import PipelineSpec, TaskType
from evergreen.training.model import FeatureSchema


def build_baseline(spec: PipelineSpec, schema: FeatureSchema) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in schema.columns if schema.kinds[c] != "categorical"]
    categorical = [c for c in schema.columns if schema.kinds[c] == "categorical"]
    transformers = []
    if numeric:
        transformers.append(("num", Pipeline([
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]), numeric))
    if categorical:
        transformers.append(("cat", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]), categorical))
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        estimator: Any = LogisticRegression(max_iter=2000)
    else:
        estimator = Ridge(alpha=1.0)
    return Pipeline([("features", ColumnTransformer(transformers)), ("model", estimator)])


def baseline_input(matrix: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Categoricals as object columns with NaN: what SimpleImputer/OneHotEncoder handle everywhere."""
    out = matrix.copy()
    for name in schema.columns:
        if schema.kinds[name] == "categorical":
            out[name] = np.asarray(matrix[name].astype(object).where(matrix[name].notna(), np.nan), dtype=object)
    return out


def predict_baseline(model: Any, X: pd.DataFrame, task_type: TaskType) -> np.ndarray:
    if task_type == TaskType.BINARY_CLASSIFICATION:
        return model.predict_proba(X)[:, 1]
    return model.predict(X)
