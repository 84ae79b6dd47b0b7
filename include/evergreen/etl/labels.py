"""Labels and codes compared by their text, so a value means the same in YAML, CSV and Parquet.

A CSV column of integer codes reads as ``int64`` (``float64`` when a value is missing), the same codes in
Parquet may be ``Int64`` or strings, and a spec may write them as ``1`` or ``"1"``. Their *label text*
is one canonical string: integral numbers without a decimal point (``1``, ``1.0`` and ``"1"`` are all
``"1"``), booleans as ``true``/``false``, strings as they are. The gate compares allowed values, and the
ETL stores categorical features and maps binary labels, through this one definition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def label_text(value: Any) -> str:
    """The canonical text of one scalar (see the module docstring)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else repr(value)
    if hasattr(value, "item"):  # numpy scalars
        return label_text(value.item())
    text = str(value)
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered
    try:
        number = float(text)
    except ValueError:
        return text
    return label_text(number) if math.isfinite(number) and text.strip() == text else text


def label_texts(values: pd.Series) -> pd.Series:
    """:func:`label_text` of every value, vectorised for the common dtypes; missing stays missing (<NA>)."""
    import numpy as np
    import pandas as pd

    missing = values.isna()
    if pd.api.types.is_bool_dtype(values.dtype):
        text = values.map({True: "true", False: "false"})
    elif pd.api.types.is_integer_dtype(values.dtype):
        text = values.astype("Int64").astype("str")
    elif pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        integral = np.isfinite(numbers) & (np.floor(numbers) == numbers)
        text = pd.Series(np.where(integral, np.nan_to_num(numbers).astype("int64").astype(str), numbers.astype(str)),
                         index=values.index)
    else:
        uniques = pd.unique(values[~missing])
        mapping = {u: label_text(u) for u in uniques}
        text = values.map(mapping)
    return text.where(~missing, None).astype("str")


def value_set_variants(values: Iterable[Any]) -> list[Any]:
    """The allowed values in every form a column may hold them (for an ``in set`` check on raw values):
    each value, its label text, and the number or boolean that text denotes."""
    out: list[Any] = []
    seen: set[tuple[type, Any]] = set()

    def add(v: Any) -> None:
        key = (type(v), v)
        if key not in seen:
            seen.add(key)
            out.append(v)

    for value in values:
        add(value)
        text = label_text(value)
        add(text)
        if text in ("true", "false"):
            add(text == "true")
            add(text.capitalize())
            continue
        try:
            number = float(text)
        except ValueError:
            continue
        if number.is_integer():
            add(int(number))
        add(number)
    return out


def binary_labels(values: pd.Series, positive: Any, negative: Any | None = None) -> pd.Series:
    """0/1 (``Int8``, <NA> where missing) from a labelled binary target: 1 where the label text equals
    ``positive``'s; the values that are neither label are <NA> here (the gate has refused them already)."""
    import pandas as pd

    text = label_texts(values)
    pos = text == label_text(positive)
    if negative is None:
        neg = text.notna() & ~pos
    else:
        neg = text == label_text(negative)
    out = pd.Series(pd.NA, index=values.index, dtype="Int8")
    out[pos.fillna(False).to_numpy(dtype=bool)] = 1
    out[neg.fillna(False).to_numpy(dtype=bool)] = 0
    return out
