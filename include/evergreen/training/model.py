"""The served model: the feature matrix it builds from raw partition columns, and its pyfunc wrapper.

This file is the model's code: MLflow logs it with every model (models from code, no pickle) and runs it
on load, so it imports only numpy, pandas, xgboost and mlflow: the model then loads where neither Airflow
nor evergreen is installed (tests/unit/test_model_serving.py proves it). Keep evergreen imports out of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FeatureSchema:
    """Model columns in order, their kind and the category list fixed from the training data."""

    columns: tuple[str, ...]
    kinds: dict[str, str]
    categories: dict[str, list[str]]
    missing: str = "native"  # ModelSpec.missing_values; models saved before it existed used NaN

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "kinds": dict(self.kinds), "categories": dict(self.categories),
                "missing": self.missing}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        return cls(tuple(data["columns"]), dict(data["kinds"]), {k: list(v) for k, v in data["categories"].items()},
                   data.get("missing", "native"))

    def xgboost_categories(self, name: str) -> list[str]:
        """The categories XGBoost is given for ``name``: the training ones, plus the missing one if encoded."""
        extra = [MISSING_CATEGORY] if self.missing == "sentinel" else []
        return [*self.categories[name], *extra]


MISSING_VALUE = -1e30  # float32-representable and below any real feature value
MISSING_CATEGORY = "__missing__"


def xgboost_input(matrix: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The model matrix as XGBoost sees it: with ``schema.missing == "sentinel"`` missing numerics become
    ``MISSING_VALUE`` and missing or unseen categories ``MISSING_CATEGORY``, so the matrix is dense."""
    if schema.missing != "sentinel":
        return matrix
    out: dict[str, Any] = {}
    for name in schema.columns:
        values = matrix[name]
        if schema.kinds[name] == "categorical":
            codes = values.cat.codes.to_numpy().copy()
            codes[codes < 0] = len(schema.categories[name])
            dtype = pd.CategoricalDtype(pd.Index(schema.xgboost_categories(name), dtype=object))
            out[name] = pd.Categorical.from_codes(codes, dtype=dtype)
        else:
            array = values.to_numpy(dtype="float64", copy=True)
            array[np.isnan(array)] = MISSING_VALUE
            out[name] = array
    return pd.DataFrame(out, index=matrix.index, copy=False)  # fresh columns: no consolidation copy


def _as_float(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values):
        values = values.astype("Float64")
    elif not pd.api.types.is_numeric_dtype(values):
        # Booleans that arrive as text (CSV, JSON requests): map the usual spellings, anything else is NaN.
        text = values.astype("object").map(lambda v: str(v).strip().lower() if v is not None else v)
        mapped = text.map({"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0})
        return mapped.to_numpy(dtype="float64", na_value=np.nan)
    numeric = pd.to_numeric(values, errors="coerce")
    return np.asarray(numeric.to_numpy(dtype="float64", na_value=np.nan), dtype="float64")


def _as_category(values: pd.Series, categories: list[str]) -> pd.Categorical:
    dtype = pd.CategoricalDtype(pd.Index(categories, dtype=object))
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
        # Text in Arrow (what the feature ETL writes): Arrow's hash lookup, ~4x pandas' indexer on a day.
        # Values outside the training categories and missing values both get code -1, as the model expects.
        import pyarrow as pa
        import pyarrow.compute as pc

        array = pa.chunked_array(values.array.__arrow_array__())
        positions = pc.index_in(array, value_set=pa.array(categories, type=array.type))
        return pd.Categorical.from_codes(pc.fill_null(positions, -1).to_numpy(), dtype=dtype)
    if isinstance(values.dtype, pd.StringDtype):
        return pd.Categorical(values.where(values.isin(categories)), dtype=dtype)
    text = values.astype("object").map(str).where(values.notna(), None)
    # Values outside the training categories become NaN: the model treats them like missing.
    text = text.where(text.isin(categories), None)
    return pd.Categorical(text.to_numpy(dtype=object), dtype=dtype)


def fit_feature_schema(frame: pd.DataFrame, features: Mapping[str, str], missing: str = "native") -> FeatureSchema:
    """Fix column order and the sorted category list of each categorical from (training) data."""
    categories: dict[str, list[str]] = {}
    for name, kind in features.items():
        if kind == "categorical":
            values = frame[name]
            categories[name] = sorted({str(v) for v in values[values.notna()].astype("object")})
    return FeatureSchema(tuple(features), {k: str(v) for k, v in features.items()}, categories, missing)


def prepare_features(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Model matrix: numerics and booleans as float64, categoricals as pandas Categorical (fixed categories)."""
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        raise KeyError(f"input lacks model features {missing}")
    out: dict[str, Any] = {}
    for name in schema.columns:
        if schema.kinds[name] == "categorical":
            out[name] = _as_category(frame[name], schema.categories[name])
        else:
            out[name] = _as_float(frame[name])
    return pd.DataFrame(out, index=frame.index, copy=False)  # fresh columns: no consolidation copy


def booster_scores(booster: Any, matrix: pd.DataFrame) -> np.ndarray:
    """XGBoost's scores (float64) on an :func:`xgboost_input` matrix, predicted in place: the same numbers
    as through a ``DMatrix``, without copying the rows into one first."""
    return np.asarray(booster.inplace_predict(matrix), dtype="float64")


@dataclass(frozen=True)
class LinearBlocks:
    """The linear baseline's design in two parts: the standardised numerics (imputed with the training
    medians, plus a missing indicator where training had gaps) as a dense matrix, and for each categorical
    each row's one-hot column within its block (-1: none, an unseen value). The one-hot part is never
    materialised for scoring: a categorical of 30,000 values on a 1M-row day would be a 240 GB matrix."""

    numeric: np.ndarray  # rows x (numeric + indicator) columns
    hot: list[np.ndarray]  # per categorical of params["categorical"]: one-hot column per row, or -1
    widths: list[int]  # per categorical: its number of one-hot columns


def linear_blocks(params: Mapping[str, Any], matrix: pd.DataFrame) -> LinearBlocks:
    """The linear baseline's design of a model matrix (:func:`prepare_features`), as :class:`LinearBlocks`."""
    numeric = params["numeric"]
    dense = np.empty((len(matrix), 0), dtype="float64")
    if numeric:
        values = np.column_stack([matrix[c].to_numpy(dtype="float64", na_value=np.nan) for c in numeric])
        missing = np.isnan(values)
        filled = np.where(missing, np.asarray(params["medians"], dtype="float64"), values)
        indicators = missing[:, [numeric.index(c) for c in params["indicators"]]].astype("float64")
        design = np.hstack([filled, indicators])
        dense = (design - np.asarray(params["mean"], dtype="float64")) / np.asarray(params["scale"], dtype="float64")
    hot: list[np.ndarray] = []
    for name, categories in params["categorical"]:
        # Each distinct value's text (missing as MISSING_CATEGORY) is placed once, not per row.
        values = matrix[name]
        if isinstance(values.dtype, pd.CategoricalDtype):  # prepare_features' output: its codes, no hashing
            codes, uniques = values.cat.codes.to_numpy(), values.cat.categories
        else:
            codes, uniques = pd.factorize(values.astype("object"), use_na_sentinel=True)
        position = {str(c): i for i, c in enumerate(categories)}
        hot.append(np.array([position.get(str(v), -1) for v in uniques] + [position.get(MISSING_CATEGORY, -1)],
                            dtype=np.int64)[codes])  # (code -1, missing, takes the last entry)
    return LinearBlocks(numeric=dense, hot=hot, widths=[len(c) for _, c in params["categorical"]])


SPARSE_DESIGN_DENSITY = 0.3  # scikit-learn's ColumnTransformer default: below it the design is sparse


def linear_design(params: Mapping[str, Any], matrix: pd.DataFrame) -> Any:
    """The full design matrix the baseline is fitted on (numerics, then each categorical's one-hot block):
    dense, or a CSR matrix when the one-hot columns make it mostly zeros (a high-cardinality categorical),
    as scikit-learn's ColumnTransformer stacks it. Scoring never builds it (:func:`predict_linear`)."""
    from scipy import sparse

    blocks = linear_blocks(params, matrix)
    rows, width = len(matrix), blocks.numeric.shape[1] + sum(blocks.widths)
    parts = [sparse.csr_matrix(blocks.numeric)]
    for hot, n in zip(blocks.hot, blocks.widths, strict=True):
        on = np.flatnonzero(hot >= 0)
        parts.append(sparse.csr_matrix((np.ones(len(on)), (on, hot[on])), shape=(rows, n)))
    design = sparse.hstack(parts, format="csr")
    filled = rows * (blocks.numeric.shape[1] + len(blocks.hot))  # scikit-learn counts a dense block as full
    return design if width and filled / (rows * width or 1) < SPARSE_DESIGN_DENSITY else design.toarray()


def _one_hot_terms(blocks: LinearBlocks, values: np.ndarray) -> list[np.ndarray]:
    """Per categorical, each row's entry of ``values`` (one per one-hot column) at its hot column, 0 if none."""
    terms, offset = [], blocks.numeric.shape[1]
    for hot, n in zip(blocks.hot, blocks.widths, strict=True):
        block = values[offset:offset + n]
        terms.append(np.where(hot >= 0, block[np.maximum(hot, 0)] if n else 0.0, 0.0))
        offset += n
    return terms


def predict_linear(params: Mapping[str, Any], matrix: pd.DataFrame) -> np.ndarray:
    """The linear baseline on a model matrix, from its exported parameters: the linear score of its design
    (a probability for a logistic model), the one-hot part as a lookup of each row's coefficient. numpy
    only, so the served baseline needs neither scikit-learn nor a pickle."""
    blocks = linear_blocks(params, matrix)
    coef = np.asarray(params["coef"], dtype="float64")
    score = blocks.numeric @ coef[:blocks.numeric.shape[1]] + float(params["intercept"])
    for term in _one_hot_terms(blocks, coef):
        score = score + term
    if params["link"] == "logistic":
        return 1.0 / (1.0 + np.exp(-score))
    return score


BIAS = "__bias__"


def linear_contributions(params: Mapping[str, Any], matrix: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """Exact SHAP values of the linear baseline (features taken as independent), in its link's space:
    coefficient times the design column's distance from its training mean, summed per model column; the
    last column is the expected score. Rows sum to the linear score, as XGBoost's ``pred_contribs`` do."""
    blocks = linear_blocks(params, matrix)
    coef = np.asarray(params["coef"], dtype="float64")
    # Standardised numerics have mean 0 on the training sample; one-hot columns have their category's rate.
    centre = np.asarray(params.get("design_mean") or np.zeros(len(coef)), dtype="float64")
    out = np.zeros((len(matrix), len(columns) + 1), dtype="float64")
    index = {name: i for i, name in enumerate(columns)}
    width = blocks.numeric.shape[1]
    parts = (blocks.numeric - centre[:width]) * coef[:width]
    for j, source in enumerate([*params["numeric"], *params["indicators"]]):
        out[:, index[source]] += parts[:, j]
    # A categorical's one-hot columns together: its hot column's coefficient, less the block's centre.
    offset = width
    for (name, _), term, n in zip(params["categorical"], _one_hot_terms(blocks, coef), blocks.widths, strict=True):
        out[:, index[name]] += term - float(centre[offset:offset + n] @ coef[offset:offset + n])
        offset += n
    out[:, -1] = float(params["intercept"]) + float(centre @ coef)
    return out


class EvergreenModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: raw feature-partition columns in, P(y=1) or regression values out. It serves the
    XGBoost booster (artifact ``booster``) or the linear baseline's parameters (artifact ``linear``)."""

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["feature_schema"], encoding="utf-8") as fh:
            self._schema = FeatureSchema.from_dict(json.load(fh))
        self._booster: Any = None
        self._linear: dict[str, Any] | None = None
        if "linear" in context.artifacts:
            with open(context.artifacts["linear"], encoding="utf-8") as fh:
                self._linear = json.load(fh)
        else:
            import xgboost as xgb

            self._booster = xgb.Booster()
            self._booster.load_model(context.artifacts["booster"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        matrix = prepare_features(pd.DataFrame(model_input), self._schema)
        if self._linear is not None:
            return predict_linear(self._linear, matrix).astype("float64")
        return booster_scores(self._booster, xgboost_input(matrix, self._schema))

    def contributions(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """SHAP values per row and model column (plus ``__bias__``): :func:`feature_contributions`."""
        return feature_contributions(self._schema, pd.DataFrame(model_input), booster=self._booster,
                                     linear=self._linear)


def feature_contributions(schema: FeatureSchema, frame: pd.DataFrame, *, booster: Any = None,
                          linear: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """SHAP values per row and model column (plus ``__bias__``) in the margin's space (log-odds for a
    classifier): XGBoost's own TreeSHAP (``pred_contribs``), or the linear baseline's exact ones."""
    matrix = prepare_features(frame, schema)
    if linear is not None:
        values = linear_contributions(linear, matrix, schema.columns)
    else:
        import xgboost as xgb

        dmatrix = xgb.DMatrix(xgboost_input(matrix, schema), enable_categorical=True)
        values = booster.predict(dmatrix, pred_contribs=True).astype("float64")
    return pd.DataFrame(values, columns=[*schema.columns, BIAS], index=matrix.index)


# Models from code: MLflow logs this file with the model and runs it to build the served object, so the
# artifact holds no pickle (nothing executes on load but this file, whose hash the registry checks).
mlflow.models.set_model(EvergreenModel())
