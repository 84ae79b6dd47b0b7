"""The baseline every challenger must beat: a linear model (logistic or ridge) on the same features.

It sees the model matrix of :func:`evergreen.training.model.prepare_features`, imputed and scaled (numeric)
or one-hot encoded (categorical), and is fitted on a bounded, seeded sample of the training days.
The transform is learnt in numpy (:func:`fit_design`); the design it is fitted on comes from the blocks
serving scores with (:func:`evergreen.training.model.linear_blocks`), and scikit-learn fits the linear
model on it. What is
kept, scored and served are the exported parameters (:func:`fit_baseline`,
:func:`evergreen.training.model.predict_linear`), so the baseline is a real candidate for promotion: a
registered model from the same code file as XGBoost's, without a pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from evergreen.spec import PipelineSpec, TaskType
from evergreen.training.model import (
    MISSING_CATEGORY,
    FeatureSchema,
    linear_design,
    predict_linear,
    prepare_features,
)


def fit_design(schema: FeatureSchema, matrix: pd.DataFrame) -> dict[str, Any]:
    """The baseline's feature transform learnt from a model matrix, as the parameters :func:`linear_design`
    applies: scikit-learn's ``SimpleImputer(median, add_indicator, keep_empty_features)`` then
    ``StandardScaler`` on the numerics, and ``OneHotEncoder(handle_unknown="ignore")`` of the categories
    seen (missing as their own), computed in numpy with scikit-learn's arithmetic (tests/unit/test_baseline.py
    holds them equal): its column transformer cost twice the fit itself on a backtest's samples."""
    numeric = [c for c in schema.columns if schema.kinds[c] != "categorical"]
    params: dict[str, Any] = {"numeric": numeric, "medians": [], "indicators": [], "mean": [], "scale": [],
                              "categorical": []}
    if numeric:
        values = np.column_stack([matrix[c].to_numpy(dtype="float64", na_value=np.nan) for c in numeric])
        missing = np.isnan(values)
        gaps = missing.any(axis=0)
        medians = np.zeros(len(numeric))
        if len(values):
            medians[~gaps] = np.median(values[:, ~gaps], axis=0)
        for j in np.flatnonzero(gaps & ~missing.all(axis=0)):  # an empty column is imputed with 0 (keep_empty_features)
            medians[j] = np.median(values[~missing[:, j], j])
        design = np.hstack([np.where(missing, medians, values), missing[:, gaps].astype("float64")])
        rows = len(design)
        mean = design.sum(axis=0) / rows
        deviation = design - mean
        variance = ((deviation ** 2).sum(axis=0) - deviation.sum(axis=0) ** 2 / rows) / rows
        eps = np.finfo(np.float64).eps
        constant = variance <= rows * eps * variance + (rows * mean * eps) ** 2  # scaled by 1, as scikit-learn
        params.update(medians=medians.tolist(), indicators=[c for c, gap in zip(numeric, gaps, strict=True) if gap],
                      mean=mean.tolist(), scale=np.where(constant, 1.0, np.sqrt(variance)).tolist())
    for name in (c for c in schema.columns if schema.kinds[c] == "categorical"):
        categories = matrix[name].cat.categories
        codes = matrix[name].cat.codes.to_numpy()
        counts = np.bincount(codes[codes >= 0], minlength=len(categories))
        seen = [str(c) for c, n in zip(categories, counts, strict=True) if n]
        if (codes < 0).any():  # missing (or unseen) values are a category of their own
            seen.append(MISSING_CATEGORY)
        params["categorical"].append([name, sorted(seen)])
    return params


def fit_baseline(spec: PipelineSpec, schema: FeatureSchema, sample: pd.DataFrame, y: np.ndarray) -> dict[str, Any]:
    """Fit the linear baseline on ``sample`` and return its exported parameters (what
    :func:`~evergreen.training.model.predict_linear` serves), with the design's mean on the sample (the
    reference point of its SHAP values). The design is :func:`linear_design`'s, from the blocks serving uses."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from threadpoolctl import threadpool_limits

    matrix = prepare_features(sample, schema)
    params = fit_design(schema, matrix)
    design = linear_design(params, matrix)
    classifier = spec.task_type == TaskType.BINARY_CLASSIFICATION
    estimator: Any = LogisticRegression(max_iter=2000) if classifier else Ridge(alpha=1.0)
    # One BLAS thread: L-BFGS on a few dozen columns ran 2.5x slower on OpenBLAS's threads (2 cores), and
    # the coefficients no longer depend on the machine's core count.
    with threadpool_limits(limits=1, user_api="blas"):
        estimator.fit(design, y)
    params.update(coef=np.asarray(estimator.coef_, dtype="float64").reshape(-1).tolist(),
                  intercept=float(np.asarray(estimator.intercept_, dtype="float64").reshape(-1)[0]),
                  link="logistic" if classifier else "identity", estimator=type(estimator).__name__,
                  columns=list(schema.columns),
                  design_mean=(np.asarray(design.mean(axis=0)).reshape(-1).tolist() if design.shape[0]
                               else [0.0] * design.shape[1]))
    return params


def predict_baseline(params: dict[str, Any], frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """The baseline's scores on feature rows (what the served baseline computes)."""
    if frame.empty:
        return np.empty(0, dtype="float64")
    return predict_linear(params, prepare_features(frame, schema))
