"""Feature derivations shared by the ETL (which writes them) and the readers that may need to redo them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evergreen.spec import TIME_FEATURES, PipelineSpec

if TYPE_CHECKING:
    import pandas as pd


def add_time_features(frame: pd.DataFrame, spec: PipelineSpec, *, overwrite: bool = True) -> pd.DataFrame:
    """``event_hour``, ``event_day_of_week`` (0 = Monday) and ``is_weekend`` from the event timestamp,
    in the spec's timezone. With ``overwrite=False`` a frame that already has them is returned as is."""
    import pandas as pd

    if not spec.etl.time_features or spec.timestamp_column not in frame.columns:
        return frame
    if not overwrite and all(name in frame.columns for name in TIME_FEATURES):
        return frame
    local = pd.to_datetime(frame[spec.timestamp_column], utc=True).dt.tz_convert(spec.schedule.timezone)
    frame = frame.copy()
    frame["event_hour"] = local.dt.hour.astype("float64")
    frame["event_day_of_week"] = local.dt.day_of_week.astype("float64")
    frame["is_weekend"] = (local.dt.day_of_week >= 5).astype("boolean")
    return frame


def sort_canonical(frame: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """Rows in (timestamp, entity keys) order, index reset: the same rows in any input order give the same
    bytes. Already-ordered frames (most raw days, every ETL output) are detected, not re-sorted."""
    by = [spec.timestamp_column, *spec.entity_keys]
    if not _is_sorted(frame, by):
        frame = frame.sort_values(by, kind="stable")
    return frame.reset_index(drop=True)


def _is_sorted(frame: pd.DataFrame, by: list[str]) -> bool:
    """Whether ``frame`` is already in lexicographic ``by`` order, without sorting it."""
    import numpy as np
    import pandas as pd

    n = len(frame)
    if n < 2:
        return True
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        undecided = np.ones(n - 1, dtype=bool)
        for column in by:
            values = frame[column]
            if values.hasnans:
                return False
            if pd.api.types.is_datetime64_any_dtype(values):
                values = values.astype("int64")  # epoch units: numpy compares them natively
            if isinstance(values.dtype, pd.StringDtype):  # compare in Arrow, not str by str in Python
                text = pa.chunked_array(pa.array(values, type=pa.large_string())).combine_chunks()
                earlier, later = text[:-1], text[1:]
                greater = pc.greater(earlier, later).to_numpy(zero_copy_only=False)
                equal = pc.equal(earlier, later).to_numpy(zero_copy_only=False)
            else:
                array = values.to_numpy()
                greater, equal = array[:-1] > array[1:], array[:-1] == array[1:]
            if (undecided & greater).any():
                return False
            undecided &= equal
            if not undecided.any():
                return True
        return True
    except (TypeError, pa.ArrowException):  # incomparable values: let sort_values decide (and raise)
        return False
