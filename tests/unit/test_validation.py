"""The validation gate's screen against Great Expectations: the screen may only ever be stricter.

``screen_passes`` lets a clean partition through without starting GX. These tests run the screen and GX
side by side on clean days of both shipped specs and on corrupted days (every way the ETL tests and the
robustness tests break data, plus boundary cases), and check that the screen never passes a day that GX
fails, and that it does pass the clean days (otherwise the fast path would never be taken).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from evergreen.etl import ingest as etl
from evergreen.etl import validation
from evergreen.simulate import generate_day
from evergreen.spec import PipelineSpec, get_spec
from helpers import (
    bad_duplicate_keys,
    bad_out_of_range,
    bad_timestamp_outside_day,
    bad_unknown_category,
    bad_wrong_type,
    same_day_spec,
)

DAY = dt.date(2026, 11, 1)
FRAUD = same_day_spec("fraud")  # the target's own expectations are part of the screen
ETA = get_spec("delivery_eta")


def _as_read(spec: PipelineSpec, raw: pd.DataFrame) -> pd.DataFrame:
    """The frame the gate sees: written in the spec's format, read back and timestamps parsed."""
    buffer = io.BytesIO()
    if spec.source.format == "parquet":
        raw.to_parquet(buffer, index=False)
        buffer.seek(0)
        frame = pd.read_parquet(buffer)
    else:
        raw.to_csv(buffer, index=False)
        buffer.seek(0)
        frame = pd.read_csv(buffer)
    return etl.parse_timestamps(spec, frame)


def _set(column: str, rows: list[int], value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def corrupt(raw: pd.DataFrame) -> pd.DataFrame:
        raw = raw.copy()
        if isinstance(value, str) and not pd.api.types.is_string_dtype(raw[column]):
            raw[column] = raw[column].astype("str")  # a file has one type per column: text here
        raw.loc[rows, column] = value
        return raw

    return corrupt


def _nulls(column: str, fraction: float) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def corrupt(raw: pd.DataFrame) -> pd.DataFrame:
        raw = raw.copy()
        raw.loc[raw.index[: int(len(raw) * fraction)], column] = np.nan
        return raw

    return corrupt


def _float_target(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.assign(is_fraud=raw["is_fraud"].astype("float64"))


def _extension_ints(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.assign(txn_count_24h=raw["txn_count_24h"].astype("Int64"))


def _booleans_as_text(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.assign(card_present=raw["card_present"].map({True: "True", False: "False"}))


def _target_out_of_set(raw: pd.DataFrame) -> pd.DataFrame:
    raw = raw.copy()
    raw.loc[4, "is_fraud"] = 2
    return raw


FRAUD_CASES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "clean": lambda raw: raw,
    "out_of_range": bad_out_of_range,
    "negative_amount": _set("amount", [2], -1.0),
    "infinite_amount": _set("amount", [2], np.inf),
    "wrong_type": bad_wrong_type,
    "unknown_category": bad_unknown_category,
    "null_in_required": _set("merchant_category", [7], None),
    "null_key": _set("transaction_id", [7], None),
    "duplicate_key": bad_duplicate_keys,
    "timestamp_outside": bad_timestamp_outside_day,
    "timestamp_last_microsecond": _set("event_ts", [0], pd.Timestamp("2026-11-01T23:59:59.999999Z")),
    "timestamp_next_midnight": _set("event_ts", [0], pd.Timestamp("2026-11-02T00:00:00Z")),
    "missing_column": lambda raw: raw.drop(columns=["country"]),
    "too_few_rows": lambda raw: raw.head(20),
    "empty": lambda raw: raw.head(0),
    "nulls_within_budget": _nulls("device_risk_score", 0.05),
    "nulls_over_budget": _nulls("device_risk_score", 0.6),
    "float_target": _float_target,
    "target_out_of_set": _target_out_of_set,
    "extension_ints": _extension_ints,
    "booleans_as_text": _booleans_as_text,
    "constant_column": lambda raw: raw.assign(channel="web"),
}


def _outcomes(spec: PipelineSpec, frame: pd.DataFrame) -> tuple[bool, validation.ValidationReport]:
    checks = validation.expectation_checks(spec, DAY, list(frame.columns))
    return validation.screen_passes(checks, frame), validation.validate_frame(spec, DAY, frame, screen=False)


@pytest.fixture(scope="module")
def fraud_raw() -> pd.DataFrame:
    return generate_day(FRAUD, DAY)


@pytest.mark.parametrize("case", list(FRAUD_CASES))
def test_screen_is_never_looser_than_gx(fraud_raw: pd.DataFrame, case: str) -> None:
    frame = _as_read(FRAUD, FRAUD_CASES[case](fraud_raw))
    screened, report = _outcomes(FRAUD, frame)
    assert report.engine == "great_expectations"
    if screened:
        assert report.success, f"{case}: the screen passed a day GX fails: {report.message()}"
    expected_gx = case in {"clean", "timestamp_last_microsecond", "nulls_within_budget", "float_target",
                           "extension_ints", "booleans_as_text", "constant_column"}
    assert report.success is expected_gx, report.message()
    if case in {"clean", "timestamp_last_microsecond", "nulls_within_budget", "constant_column", "float_target",
                "extension_ints"}:
        assert screened, f"{case}: a clean day must take the fast path"


@pytest.mark.parametrize("case", ["clean", "late_delivery", "missing_target", "text_in_numeric"])
def test_screen_on_csv_spec(case: str) -> None:
    raw = generate_day(ETA, DAY)
    if case == "late_delivery":
        raw = raw.copy()
        raw.loc[3, ETA.target.name] = 10_000.0
    elif case == "missing_target":
        raw = raw.copy()
        raw.loc[3, ETA.target.name] = np.nan
    elif case == "text_in_numeric":
        numeric = next(f.name for f in ETA.features if f.type == "numeric")
        raw = _set(numeric, [3], "n/a")(raw)
    frame = _as_read(ETA, raw)
    screened, report = _outcomes(ETA, frame)
    if screened:
        assert report.success, report.message()
    assert report.success is (case == "clean"), report.message()
    if case == "clean":
        assert screened


def test_clean_day_does_not_start_gx_and_bad_day_gets_gx_report(fraud_raw: pd.DataFrame) -> None:
    clean = validation.validate_frame(FRAUD, DAY, _as_read(FRAUD, fraud_raw))
    assert clean.success and clean.engine == "screen" and clean.summary()["engine"] == "screen"
    assert clean.evaluated == len(validation.expectation_checks(FRAUD, DAY, list(fraud_raw.columns)))

    bad = validation.validate_frame(FRAUD, DAY, _as_read(FRAUD, FRAUD_CASES["out_of_range"](fraud_raw)))
    assert not bad.success and bad.engine == "great_expectations"
    assert bad.bad_row_positions == [5, 9]
    [failure] = bad.failures
    assert failure.expectation == "expect_column_values_to_be_between" and failure.unexpected_count == 2
    # Only the failed expectation was re-run in COMPLETE mode; the others keep their BOOLEAN_ONLY verdict.
    assert sum(o.success for o in bad.outcomes) == bad.evaluated - 1


def test_nullable_extension_numbers_are_normalised_for_the_gate(fraud_raw: pd.DataFrame) -> None:
    raw = fraud_raw.assign(
        txn_count_24h=fraud_raw["txn_count_24h"].astype("Int64"),
        device_risk_score=fraud_raw["device_risk_score"].astype("Float64"),
    )
    frame = etl.parse_timestamps(FRAUD, raw)
    assert frame["txn_count_24h"].dtype == np.dtype("int64")  # no gaps: exact integers stay integers
    assert frame["device_risk_score"].dtype == np.dtype("float64")
    assert frame["device_risk_score"].isna().sum() == fraud_raw["device_risk_score"].isna().sum() > 0
    # Keys are not numbers to the gate: their dtype (and so their text form in the features) is untouched.
    ids = etl.parse_timestamps(FRAUD, raw.assign(transaction_id=pd.array(range(len(raw)), dtype="Int64")))
    assert str(ids["transaction_id"].dtype) == "Int64"
