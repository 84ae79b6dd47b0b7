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
