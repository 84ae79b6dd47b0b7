"""The data-validation gate: the spec's expectations, decided by Great Expectations 1.x.

``expectation_checks`` turns the spec's schema and expectations into one declarative list, named and
parameterised as GX expectations; ``build_suite`` makes it a GX suite. ``validate_frame`` gates a raw
partition: ``screen_passes`` recognises a clean one with vectorised checks (no GX start-up, which costs
more than the work on a small day), and every other partition is decided by GX, whose result names each
failed expectation with its counts and the positions of the offending rows (for quarantine).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from evergreen.etl.labels import value_set_variants
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
    engine: str  # "screen" (a clean partition, GX not started) or "great_expectations"

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def summary(self) -> dict[str, Any]:
        """Deterministic, JSON-safe summary (goes into the manifest)."""
        return {
            "engine": self.engine,
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


@dataclass(frozen=True)
class Check:
    """One expectation of the gate, as GX names it (``expect_...``) with its keyword arguments."""

    type: str
    kwargs: dict[str, Any]


def expectation_checks(spec: PipelineSpec, ds: dt.date, columns: list[str]) -> list[Check]:
    """The gate's expectations for one raw partition. Column-level checks only for columns that exist."""
    import pandas as pd

    present = set(columns)
    checks: list[Check] = []

    def add(type_: str, **kwargs: Any) -> None:
        checks.append(Check(f"expect_{type_}", kwargs))

    for column in spec.raw_columns:
        add("column_to_exist", column=column)
    exp = spec.expectations
    add("table_row_count_to_be_between", min_value=exp.min_rows_per_day, max_value=exp.max_rows_per_day)

    ts = spec.timestamp_column
    if ts in present:
        add("column_values_to_not_be_null", column=ts)
        if exp.timestamps_within_partition:
            start, end = partition_bounds(spec, ds)
            add("column_values_to_be_between", column=ts, min_value=pd.Timestamp(start).tz_convert("UTC"),
                max_value=pd.Timestamp(end).tz_convert("UTC") - pd.Timedelta(microseconds=1))
    for key in spec.entity_keys:
        if key in present:
            add("column_values_to_not_be_null", column=key)
    keys = [k for k in spec.entity_keys if k in present]
    if exp.unique_keys and keys == spec.entity_keys:
        if len(keys) == 1:
            add("column_values_to_be_unique", column=keys[0])
        else:
            add("compound_columns_to_be_unique", column_list=keys)

    for feature in spec.features:
        name = feature.name
        if name not in present:
            continue
        if feature.type == FeatureType.NUMERIC:
            add("column_values_to_be_in_type_list", column=name, type_list=NUMERIC_DTYPES)
            if feature.min is not None or feature.max is not None:
                add("column_values_to_be_between", column=name, min_value=feature.min, max_value=feature.max)
        elif feature.type == FeatureType.BOOLEAN:
            add("column_values_to_be_in_set", column=name, value_set=BOOLEAN_VALUES)
        elif feature.allowed_values is not None:
            # Every form the codes may take in the raw column (1, 1.0, "1"): compared by label text.
            add("column_values_to_be_in_set", column=name, value_set=value_set_variants(feature.allowed_values))
        if not feature.nullable:
            add("column_values_to_not_be_null", column=name)
        elif feature.max_null_fraction < 1.0:
            add("column_values_to_not_be_null", column=name, mostly=round(1.0 - feature.max_null_fraction, 6))

    target = spec.target
    if target.name in present and spec.labels is None:  # separate labels are checked by the outcomes ETL
        if not target.allow_missing:
            add("column_values_to_not_be_null", column=target.name)
        if target.positive_label is not None:
            labels = [target.positive_label] + ([target.negative_label] if target.negative_label is not None else [])
            if target.negative_label is not None:
                add("column_values_to_be_in_set", column=target.name, value_set=value_set_variants(labels))
            else:  # the positive label and one other value
                add("column_unique_value_count_to_be_between", column=target.name, min_value=0, max_value=2)
        else:
            add("column_values_to_be_in_type_list", column=target.name,
                type_list=NUMERIC_DTYPES + ["bool", "boolean"])
            if spec.task_type == TaskType.BINARY_CLASSIFICATION:
                add("column_values_to_be_in_set", column=target.name, value_set=[0, 1, True, False])
            elif target.min is not None or target.max is not None:
                add("column_values_to_be_between", column=target.name, min_value=target.min, max_value=target.max)
    return checks


def build_suite(spec: PipelineSpec, ds: dt.date, columns: list[str]) -> gx.ExpectationSuite:
    """The GX suite for one raw partition (``expectation_checks`` as GX expectations)."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    # Handed to the constructor at once: `add_expectation` compares each new expectation with every
    # earlier one (O(n^2) pydantic dumps, 1.4 s for a 114-expectation suite).
    return gx.ExpectationSuite(
        name=f"{spec.name}_raw",
        expectations=[ExpectationConfiguration(type=c.type, kwargs=dict(c.kwargs)).to_domain_obj()
                      for c in expectation_checks(spec, ds, columns)],
    )


def screen_passes(checks: list[Check], frame: pd.DataFrame) -> bool:
    """True only when every check certainly passes under GX's semantics; any doubt returns False.

    Vectorised numpy/pandas, no GX import (~5 s per task process): a clean partition costs what the
    same checks cost in plain pandas. It only ever says "pass": a False sends the partition to GX,
    whose result is the verdict and the report. So it may be stricter than GX (nulls in a unique key,
    extension dtypes, an empty day all go to GX), never looser; ``tests/unit/test_validation.py`` checks that
    on clean and corrupted days.
    """
    import numpy as np
    import pandas as pd

    n = len(frame)
    if n == 0:
        return False

    def non_null(column: str) -> pd.Series:
        values = frame[column]
        return values[values.notna()] if values.hasnans else values

    for check in checks:
        kw = check.kwargs
        column = kw.get("column")
        if column is not None and column not in frame.columns:
            return False
        values = frame[column] if column is not None else None
        if check.type == "expect_column_to_exist":
            continue
        if check.type == "expect_table_row_count_to_be_between":
            if (kw["min_value"] is not None and n < kw["min_value"]) or (
                kw["max_value"] is not None and n > kw["max_value"]
            ):
                return False
        elif check.type == "expect_column_values_to_not_be_null":
            nulls = int(values.isna().sum())
            # GX's own arithmetic for `mostly`, so a partition at the boundary gets the same verdict.
            if nulls and ("mostly" not in kw or (n - nulls) / n < kw["mostly"]):
                return False
        elif check.type == "expect_column_values_to_be_in_type_list":
            if not isinstance(values.dtype, np.dtype) or values.dtype.name not in kw["type_list"]:
                return False
        elif check.type == "expect_column_values_to_be_between":
            kept = non_null(column)
            if not (pd.api.types.is_numeric_dtype(kept.dtype) and not pd.api.types.is_bool_dtype(kept.dtype)) and \
                    not isinstance(kept.dtype, pd.DatetimeTZDtype):
                return False
            if (kw["min_value"] is not None and (kept < kw["min_value"]).any()) or (
                kw["max_value"] is not None and (kept > kw["max_value"]).any()
            ):
                return False
        elif check.type == "expect_column_values_to_be_in_set":
            kept = non_null(column)
            dtype = kept.dtype
            if not (pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype)
                    or pd.api.types.is_string_dtype(dtype)):
                return False
            if not kept.isin(kw["value_set"]).all():  # GX's own test: Series.isin on the non-null values
                return False
        elif check.type == "expect_column_unique_value_count_to_be_between":
            if values.nunique(dropna=True) > kw["max_value"]:
                return False
        elif check.type == "expect_column_values_to_be_unique":
            if values.hasnans or values.duplicated().any():
                return False
        elif check.type == "expect_compound_columns_to_be_unique":
            if frame[kw["column_list"]].isna().any(axis=None) or frame.duplicated(kw["column_list"]).any():
                return False
        else:  # a check the screen does not know: GX decides
            return False
    return True


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


def _config_key(config: Any) -> str:
    return f"{config.type}:{sorted((k, repr(v)) for k, v in config.kwargs.items())}"


def _run_suite(context: Any, suite: gx.ExpectationSuite, frame: pd.DataFrame, result_format: str) -> Any:
    """One GX validation of ``frame`` (a single batch: GX fingerprints the whole frame per batch)."""
    import great_expectations as gx

    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite.name}_{result_format.lower()}", suite=suite,
                                data=context.data_sources.get("raw").get_asset("partition").batch_definitions[0])
    )
    return definition.run(batch_parameters={"dataframe": frame}, result_format={"result_format": result_format})


def validate_frame(spec: PipelineSpec, ds: dt.date, frame: pd.DataFrame, *, screen: bool = True
                   ) -> ValidationReport:
    """Gate a raw frame (timestamps already parsed) with the spec's expectations.

    A clean partition is recognised by ``screen_passes`` without starting GX. Anything else is decided by
    GX: the whole suite with the ``BOOLEAN_ONLY`` result format, then only the failed expectations again
    with ``COMPLETE``, which collects the offending rows' positions for quarantine (a full-frame filter
    per expectation, too costly to pay for the ones that pass).
    """
    frame = frame.reset_index(drop=True)
    checks = expectation_checks(spec, ds, list(frame.columns))
    if screen and screen_passes(checks, frame):
        report = ValidationReport(
            spec=spec.name, ds=ds.isoformat(), rows=len(frame), success=True, evaluated=len(checks),
            outcomes=[ExpectationOutcome(expectation=c.type, column=_check_column(c.kwargs), success=True)
                      for c in checks],
            bad_row_positions=[], whole_partition_bad=False, engine="screen",
        )
    else:
        report = _validate_with_gx(spec, ds, frame)
    log.info("validated %s ds=%s with %s: %d rows, %d/%d expectations failed", spec.name, ds, report.engine,
             len(frame), len(report.failures), report.evaluated)
    return report


def _check_column(kwargs: dict[str, Any]) -> str | None:
    return kwargs.get("column") or (",".join(kwargs.get("column_list", [])) or None)


def _validate_with_gx(spec: PipelineSpec, ds: dt.date, frame: pd.DataFrame) -> ValidationReport:
    import great_expectations as gx

    context = _ephemeral_context()  # GX needs an active context before a suite can be built
    context.data_sources.add_pandas("raw").add_dataframe_asset("partition").add_batch_definition_whole_dataframe(
        "whole")
    suite = build_suite(spec, ds, list(frame.columns))
    verdicts = _run_suite(context, suite, frame, "BOOLEAN_ONLY")
    results = list(verdicts.results)
    failed = [i for i, item in enumerate(results) if not item.success]
    if failed:
        detail = _run_suite(
            context,
            gx.ExpectationSuite(name=f"{suite.name}_failed", expectations=[results[i].expectation_config
                                                                           for i in failed]),
            frame,
            "COMPLETE",
        )
        # Matched by configuration, not by position: GX does not promise to keep the suite's order.
        by_config = {_config_key(item.expectation_config): item for item in detail.results}
        for i in failed:
            results[i] = by_config[_config_key(results[i].expectation_config)]

    outcomes: list[ExpectationOutcome] = []
    bad_rows: set[int] = set()
    whole_bad = False
    for item in results:
        config = item.expectation_config
        info = item.exception_info or {}
        raised = bool(info.get("raised_exception")) if isinstance(info, dict) else False
        res = item.result or {}
        indexes = res.get("unexpected_index_list")
        outcome = ExpectationOutcome(
            expectation=config.type,
            column=_check_column(config.kwargs),
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
    return ValidationReport(
        spec=spec.name,
        ds=ds.isoformat(),
        rows=len(frame),
        success=not failed,
        evaluated=len(results),
        outcomes=outcomes,
        bad_row_positions=sorted(bad_rows),
        whole_partition_bad=whole_bad,
        engine="great_expectations",
    )
