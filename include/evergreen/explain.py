"""Explanations: SHAP values from the models themselves, summarised per feature, as reason codes, and as
attribution drift.

The values come from the model code (:meth:`evergreen.training.model.EvergreenModel.contributions`):
XGBoost's own TreeSHAP (``pred_contribs``, no second model pass through another library) or the linear
baseline's exact ones. They are in the margin's space (log-odds for a classifier), so they add up to the
model's raw score. A feature's *share* is its part of the summed mean |SHAP|: shares of two models or two
days compare even when the scores' scale differs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from evergreen.training.model import BIAS

# Mean |SHAP| is a mean: a deterministic, evenly spaced subset of rows estimates it. XGBoost's TreeSHAP
# runs on one core at ~0.5 ms a row for 100 trees of depth 5 (10 s for 20,000 rows, a fifth of an M-scale
# fit); on 4,096 rows of that holdout the shares differ from those of 20,000 by a total variation of 0.004
# (largest single share 0.002), against an attribution-drift threshold of 0.2 (docs/performance.md).
SUMMARY_MAX_ROWS = 4_096


def summary_positions(n: int, max_rows: int = SUMMARY_MAX_ROWS) -> np.ndarray | slice:
    """The rows a summary is computed on: all of them, or ``max_rows`` evenly spaced (deterministic)."""
    if n <= max_rows:
        return slice(None)
    return np.linspace(0, n - 1, max_rows).astype(np.int64)


def contributions(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """SHAP values of a loaded Evergreen pyfunc (or its python model) on feature rows: one column per model
    feature and ``__bias__``."""
    python_model = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else model
    return python_model.contributions(frame)


def attribution_summary(values: pd.DataFrame) -> dict[str, Any]:
    """Mean |SHAP| per feature (largest first) and each feature's share of their sum."""
    features = [c for c in values.columns if c != BIAS]
    mean_abs = {name: float(np.abs(values[name].to_numpy()).mean()) if len(values) else 0.0 for name in features}
    total = sum(mean_abs.values())
    ordered = sorted(features, key=lambda n: (-mean_abs[n], n))
    return {
        "rows": int(len(values)),
        "mean_abs_shap": {n: mean_abs[n] for n in ordered},
        "shares": {n: (mean_abs[n] / total if total > 0 else 0.0) for n in ordered},
        "expected_value": float(values[BIAS].mean()) if BIAS in values.columns and len(values) else None,
    }


def top_features(summary: Mapping[str, Any], k: int = 10) -> list[tuple[str, float, float]]:
    """``(feature, mean |SHAP|, share)`` of the ``k`` most important features."""
    mean_abs, shares = summary.get("mean_abs_shap") or {}, summary.get("shares") or {}
    return [(name, float(value), float(shares.get(name, 0.0))) for name, value in list(mean_abs.items())[:k]]


def reason_codes(values: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per row, the ``k`` features that moved its score most (largest |SHAP| first; ties by column order):
    ``reason_<i>`` (the feature) and ``reason_<i>_shap`` (its signed value) for i = 1..k."""
    features = [c for c in values.columns if c != BIAS]
    k = min(k, len(features))
    matrix = values[features].to_numpy(dtype="float64")
    # A stable sort of -|SHAP| keeps column order among ties: the same rows always give the same codes.
    order = np.argsort(-np.abs(matrix), axis=1, kind="stable")[:, :k]
    names = np.asarray(features, dtype=object)
    out: dict[str, Any] = {}
    rows = np.arange(len(matrix))[:, None]
    picked = matrix[rows, order]
    for i in range(k):
        out[f"reason_{i + 1}"] = pd.Series(names[order[:, i]], index=values.index, dtype="str")
        out[f"reason_{i + 1}_shap"] = pd.Series(picked[:, i], index=values.index, dtype="float64")
    return pd.DataFrame(out, index=values.index)


def attribution_drift(reference: Mapping[str, Any] | None, current: Mapping[str, Any] | None, *,
                      threshold: float) -> dict[str, Any]:
    """How far the features' shares of mean |SHAP| moved from the reference's: ``shift`` is the total
    variation distance between the two share vectors (0 = the same ranking and weights, 1 = disjoint), and
    ``drifted`` says it exceeds ``threshold``. A model that starts leaning on other features than it was
    validated on is news even when no single input distribution moved much."""
    out: dict[str, Any] = {"threshold": threshold, "drifted": False, "shift": None, "features": {}}
    if not reference or not reference.get("shares"):
        return {**out, "status": "the reference profile has no attributions (a model trained before them)"}
    if not current or not current.get("shares"):
        return {**out, "status": "no attributions for the day"}
    ref, cur = reference["shares"], current["shares"]
    names = sorted(set(ref) | set(cur), key=lambda n: (-abs(cur.get(n, 0.0) - ref.get(n, 0.0)), n))
    features = {n: {"reference": float(ref.get(n, 0.0)), "current": float(cur.get(n, 0.0)),
                    "delta": float(cur.get(n, 0.0) - ref.get(n, 0.0))} for n in names}
    shift = 0.5 * sum(abs(f["delta"]) for f in features.values())
    return {**out, "status": "ok", "shift": shift, "drifted": bool(math.isfinite(shift) and shift > threshold),
            "features": features, "rows": current.get("rows")}
