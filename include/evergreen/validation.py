"""The data-validation gate: a Great Expectations 1.x suite derived from the pipeline spec.

``build_suite`` turns the spec's schema and expectations into GX expectations; ``validate_frame`` runs
them on a raw partition and returns a ``ValidationReport`` that names every failed expectation with its
counts and the positions of the offending rows (for quarantine).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from evergreen.spec import FeatureType, PipelineSpec, TaskType

if TYPE_CHECKING:
    import great_expectations as gx
    import pandas as pd

log = logging.getLogger(__name__)

NUMERIC_DTYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
    "UInt64", "Float32", "Float64",
]  # fmt: skip
# Booleans arrive as real booleans (Parquet), as 0/1 integers, or as text (CSV with missing values).
BOOLEAN_VALUES = [True, False, 0, 1, "True", "False", "true", "false", "0", "1"]
# Expectations whose failures point at rows; the others condemn the whole partition.
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed_value: Any = None
    examples: list[Any] = field(default_factory=list)
    error: str | None = None

    def describe(self) -> str:
        target = f"{self.column}: " if self.column else ""
        if self.error:
            return f"{target}{self.expectation} could not be evaluated ({self.error})"
        parts = [f"{target}{self.expectation}"]
        if self.unexpected_count is not None:
            parts.append(f"{self.unexpected_count} unexpected rows ({self.unexpected_percent or 0:.2f}%)")
        if self.observed_value is not None:
            parts.append(f"observed {self.observed_value!r}")
        if self.examples:
            parts.append(f"e.g. {self.examples!r}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ValidationReport:
    spec: str
    ds: str
    rows: int
    success: bool
    evaluated: int
    outcomes: list[ExpectationOutcome]
    bad_row_positions: list[int]
    whole_partition_bad: bool

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def summary(self) -> dict[str, Any]:
        """Deterministic, JSON-safe summary (goes into the manifest)."""
        return {
            "engine": "great_expectations",
            "success": self.success,
            "expectations": self.evaluated,
            "failed": len(self.failures),
            "rows": self.rows,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = [o.describe() for o in self.failures]
        data["bad_row_count"] = len(self.bad_row_positions)
        del data["bad_row_positions"]
        return data

    def message(self) -> str:
        lines = [
            f"data validation failed for {self.spec} ds={self.ds}: "
            f"{len(self.failures)} of {self.evaluated} expectations failed on {self.rows} rows"
        ]
        lines += [f"  - {o.describe()}" for o in self.failures]
        return "\n".join(lines)


def partition_bounds(spec: PipelineSpec, ds: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the day ``ds`` in the spec's timezone, as aware datetimes."""
    import zoneinfo

    tz = zoneinfo.ZoneInfo(spec.schedule.timezone)
    start = dt.datetime.combine(ds, dt.time(), tzinfo=tz)
    end = dt.datetime.combine(ds + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return start, end


def build_suite(spec: PipelineSpec, ds: dt.date, columns: list[str]) -> gx.ExpectationSuite:
    """The GX suite for one raw partition. Column-level checks only for columns that exist."""
    import great_expectations as gx
    import pandas as pd

    E = gx.expectations
    suite = gx.ExpectationSuite(name=f"{spec.name}_raw")
    present = set(columns)

    def add(expectation: Any) -> None:
        suite.add_expectation(expectation)

    for column in spec.raw_columns:
        add(E.ExpectColumnToExist(column=column))
    exp = spec.expectations
    add(E.ExpectTableRowCountToBeBetween(min_value=exp.min_rows_per_day, max_value=exp.max_rows_per_day))

    ts = spec.timestamp_column
    if ts in present:
        add(E.ExpectColumnValuesToNotBeNull(column=ts))
        if exp.timestamps_within_partition:
            start, end = partition_bounds(spec, ds)
            add(
                E.ExpectColumnValuesToBeBetween(
                    column=ts,
                    min_value=pd.Timestamp(start).tz_convert("UTC"),
                    max_value=pd.Timestamp(end).tz_convert("UTC") - pd.Timedelta(microseconds=1),
                )
            )
    for key in spec.entity_keys:
        if key in present:
            add(E.ExpectColumnValuesToNotBeNull(column=key))
    keys = [k for k in spec.entity_keys if k in present]
    if exp.unique_keys and keys == spec.entity_keys:
        if len(keys) == 1:
            add(E.ExpectColumnValuesToBeUnique(column=keys[0]))
        else:
            add(E.ExpectCompoundColumnsToBeUnique(column_list=keys))

    for feature in spec.features:
        name = feature.name
        if name not in present:
            continue
        if feature.type == FeatureType.NUMERIC:
            add(E.ExpectColumnValuesToBeInTypeList(column=name, type_list=NUMERIC_DTYPES))
            if feature.min is not None or feature.max is not None:
                add(E.ExpectColumnValuesToBeBetween(column=name, min_value=feature.min, max_value=feature.max))
        elif feature.type == FeatureType.BOOLEAN:
            add(E.ExpectColumnValuesToBeInSet(column=name, value_set=BOOLEAN_VALUES))
        elif feature.allowed_values is not None:
            add(E.ExpectColumnValuesToBeInSet(column=name, value_set=list(feature.allowed_values)))
        if not feature.nullable:
            add(E.ExpectColumnValuesToNotBeNull(column=name))
        elif feature.max_null_fraction < 1.0:
            add(E.ExpectColumnValuesToNotBeNull(column=name, mostly=round(1.0 - feature.max_null_fraction, 6)))

    target = spec.target
    if target.name in present:
        add(E.ExpectColumnValuesToNotBeNull(column=target.name))
        add(E.ExpectColumnValuesToBeInTypeList(column=target.name, type_list=NUMERIC_DTYPES + ["bool", "boolean"]))
        if spec.task_type == TaskType.BINARY_CLASSIFICATION:
            add(E.ExpectColumnValuesToBeInSet(column=target.name, value_set=[0, 1, True, False]))
        elif target.min is not None or target.max is not None:
            add(E.ExpectColumnValuesToBeBetween(column=target.name, min_value=target.min, max_value=target.max))
    return suite


def _ephemeral_context() -> gx.data_context.AbstractDataContext:
    # An ephemeral context keeps GX from writing a project folder or phoning home.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if value != value else value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


def validate_frame(spec: PipelineSpec, ds: dt.date, frame: pd.DataFrame) -> ValidationReport:
    """Run the spec's suite on a raw frame (timestamps already parsed) and collect the outcome."""
    frame = frame.reset_index(drop=True)
    context = _ephemeral_context()  # GX needs an active context before a suite can be built
    suite = build_suite(spec, ds, list(frame.columns))
    batch_definition = (
        context.data_sources.add_pandas(f"{spec.name}_raw")
        .add_dataframe_asset(f"ds_{ds.isoformat()}")
        .add_batch_definition_whole_dataframe("partition")
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})

    outcomes: list[ExpectationOutcome] = []
    bad_rows: set[int] = set()
    whole_bad = False
    for item in result.results:
        config = item.expectation_config
        info = item.exception_info or {}
        raised = bool(info.get("raised_exception")) if isinstance(info, dict) else False
        res = item.result or {}
        indexes = res.get("unexpected_index_list")
        outcome = ExpectationOutcome(
            expectation=config.type,
            column=config.kwargs.get("column") or (",".join(config.kwargs.get("column_list", [])) or None),
            success=bool(item.success),
            unexpected_count=res.get("unexpected_count"),
            unexpected_percent=_jsonable(res.get("unexpected_percent")),
            observed_value=_jsonable(res.get("observed_value")),
            examples=[_jsonable(v) for v in (res.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]]
            if not item.success
            else [],
            error=str(info.get("exception_message"))[:300] if raised else None,
        )
        outcomes.append(outcome)
        if item.success:
            continue
        # A `mostly` check fails for the partition's null rate, not for particular rows.
        mostly = config.kwargs.get("mostly")
        if indexes is not None and not raised and not mostly:
            bad_rows.update(int(i) for i in indexes)
        else:
            whole_bad = True
    report = ValidationReport(
        spec=spec.name,
        ds=ds.isoformat(),
        rows=len(frame),
        success=bool(result.success),
        evaluated=len(result.results),
        outcomes=outcomes,
        bad_row_positions=sorted(bad_rows),
        whole_partition_bad=whole_bad,
    )
    log.info("validated %s ds=%s: %d rows, %d/%d expectations failed", spec.name, ds, len(frame),
             len(report.failures), report.evaluated)
    return report
