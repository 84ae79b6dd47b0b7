"""The baseline every challenger must beat: a linear model (logistic or ridge) on the same features.

It sees the model matrix of :func:`evergreen.training.model.prepare_features`, imputed and scaled (numeric)
or one-hot encoded (categorical), and is fitted on a bounded, seeded sample of the training days.
scikit-learn fits it; what is kept, scored and served are its exported parameters (:func:`fit_baseline`,
:func:`evergreen.training.model.predict_linear`), so the baseline is a real candidate for promotion: a
registered model from the same code file as XGBoost's, without a pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from evergreen.spec import PipelineSpec, TaskType
from evergreen.training.model import FeatureSchema, predict_linear, prepare_features


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


def export_linear(pipeline: Any, schema: FeatureSchema) -> dict[str, Any]:
    """The fitted pipeline's parameters as JSON-safe lists (what :func:`predict_linear` computes with)."""
    features = pipeline.named_steps["features"]
    estimator = pipeline.named_steps["model"]
    numeric: list[str] = []
    out: dict[str, Any] = {"numeric": numeric, "medians": [], "indicators": [], "mean": [], "scale": [],
                           "categorical": []}
    for name, transformer, columns in features.transformers_:
        if name == "num":
            imputer, scaler = transformer.named_steps["impute"], transformer.named_steps["scale"]
            numeric.extend(columns)
            # keep_empty_features imputes a column that was empty in training with 0.
            out["medians"] = [0.0 if not np.isfinite(v) else float(v) for v in imputer.statistics_]
            flagged = imputer.indicator_.features_ if imputer.indicator_ is not None else []
            out["indicators"] = [columns[i] for i in flagged]
            out["mean"] = [float(v) for v in scaler.mean_]
            out["scale"] = [float(v) for v in scaler.scale_]
        elif name == "cat":
            encoder = transformer.named_steps["onehot"]
            # A list of pairs, not a mapping: the order is the coefficients' order, whatever sorts the JSON.
            out["categorical"] = [[c, [str(v) for v in cats]] for c, cats in zip(columns, encoder.categories_, strict=True)]
    coef = np.asarray(estimator.coef_, dtype="float64").reshape(-1)
    intercept = np.asarray(estimator.intercept_, dtype="float64").reshape(-1)
    out.update(coef=[float(v) for v in coef], intercept=float(intercept[0]),
               link="logistic" if hasattr(estimator, "predict_proba") else "identity",
               estimator=type(estimator).__name__, columns=list(schema.columns))
    return out


def fit_baseline(spec: PipelineSpec, schema: FeatureSchema, sample: pd.DataFrame, y: np.ndarray) -> dict[str, Any]:
    """Fit the linear baseline on ``sample`` and return its exported parameters, with the design's mean on
    the sample (the reference point of its SHAP values)."""
    from scipy import sparse
    from threadpoolctl import threadpool_limits

    pipeline = build_baseline(spec, schema)
    matrix = prepare_features(sample, schema)
    # The pipeline's two steps by hand (what Pipeline.fit does), to keep the design for its mean. One BLAS
    # thread: L-BFGS on a few dozen columns ran 2.5x slower on OpenBLAS's threads (2 cores), and the
    # coefficients no longer depend on the machine's core count.
    with threadpool_limits(limits=1, user_api="blas"):
        design = pipeline.named_steps["features"].fit_transform(baseline_input(matrix, schema))
        pipeline.named_steps["model"].fit(design, y)
    params = export_linear(pipeline, schema)
    # The design's mean is the reference point of the baseline's SHAP values (linear_design computes the
    # same matrix when it serves).
    mean = np.asarray(design.mean(axis=0)).reshape(-1) if sparse.issparse(design) else design.mean(axis=0)
    params["design_mean"] = [float(v) for v in mean] if design.shape[0] else [0.0] * design.shape[1]
    return params


def predict_baseline(params: dict[str, Any], frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """The baseline's scores on feature rows (what the served baseline computes)."""
    if frame.empty:
        return np.empty(0, dtype="float64")
    return predict_linear(params, prepare_features(frame, schema))
