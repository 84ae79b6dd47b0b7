"""Pipeline specs: one YAML file per model, parsed into typed, validated objects.

Specs are read from ``include/specs/`` (shipped with the project) and from every ``*.yaml`` in the
folder named by ``EVERGREEN_SPECS_DIR``. Parsing is cheap (pydantic + PyYAML) because the DAG factory
does it at parse time; nothing here touches storage, the network or Airflow.
"""

from __future__ import annotations

import datetime as dt
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from evergreen import settings

SHIPPED_SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=60)]
ColumnName = Annotated[str, Field(min_length=1, max_length=200)]
# The entity key the ETL derives for a table without one (a hash of the row's content, see etl.ingest).
ROW_KEY = "row_key"


class SpecError(ValueError):
    """A spec file is missing, unreadable or invalid; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskType(StrEnum):
    BINARY_CLASSIFICATION = "binary_classification"
    REGRESSION = "regression"


class FeatureType(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"


# Derived from the event timestamp (in the spec's timezone) by the feature ETL.
TIME_FEATURES: dict[str, FeatureType] = {
    "event_hour": FeatureType.NUMERIC,
    "event_day_of_week": FeatureType.NUMERIC,
    "is_weekend": FeatureType.BOOLEAN,
}


class SourceSpec(_Model):
    """Where raw data comes from, relative to the storage root unless it is a full URI.

    ``daily_files``: one file (or a glob of files) per day, ``path`` contains ``{ds}``.
    ``historical``: one file holding many days, filtered to the run's day by the timestamp column.
    ``na_values``: for CSV, the only tokens read as missing (default: pandas' list, in which ``None`` and
    ``NA`` are missing; a table where ``None`` is a real label lists e.g. ``["NA", ""]``).
    """

    kind: Literal["daily_files", "historical"] = "daily_files"
    path: str
    format: Literal["csv", "parquet"] = "parquet"
    na_values: list[str] | None = None

    @model_validator(mode="after")
    def _path_matches_kind(self) -> SourceSpec:
        if self.kind == "daily_files" and "{ds}" not in self.path:
            raise ValueError("a daily_files source needs '{ds}' in its path")
        if self.kind == "historical" and "{ds}" in self.path:
            raise ValueError("a historical source is one file: its path must not contain '{ds}'")
        return self


class FeatureSpec(_Model):
    """A column of the feature table and the data expectations that guard it. ``use: model`` (default): a
    model input. ``use: attribute``: validated and stored like a feature, never shown to the model, e.g. a
    protected attribute that the fairness gate groups the holdout by."""

    name: ColumnName
    type: FeatureType
    use: Literal["model", "attribute"] = "model"
    description: str = ""
    nullable: bool = True
    max_null_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    min: float | None = None
    max: float | None = None
    # In the column's own type: integer codes as integers, labels as strings (compared by their text,
    # so 1, 1.0 and "1" are one code; see etl.labels).
    allowed_values: list[StrictBool | StrictInt | StrictFloat | StrictStr] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.type != FeatureType.NUMERIC and (self.min is not None or self.max is not None):
            raise ValueError("min/max only apply to numeric features")
        if self.allowed_values is not None and self.type != FeatureType.CATEGORICAL:
            raise ValueError("allowed_values only apply to categorical features")
        if not self.nullable and self.max_null_fraction > 0:
            raise ValueError("a non-nullable feature cannot have max_null_fraction > 0")
        return self


Label = StrictBool | StrictInt | StrictStr


class TargetSpec(_Model):
    """The label column.

    ``positive_label``: for a binary target given as strings, booleans or codes (``"Yes"``, ``true``, ``2``),
    the value that means 1; ``negative_label`` (optional) the value that means 0, otherwise any one other
    value is 0. The ETL stores 0/1 and the mapping goes into every manifest and model version.
    ``allow_missing``: rows without a label are kept (scored and monitored, counted in the manifest) but
    never trained or evaluated on; otherwise a missing label fails the day.
    """

    name: ColumnName
    min: float | None = None
    max: float | None = None
    positive_label: Label | None = None
    negative_label: Label | None = None
    allow_missing: bool = False

    @model_validator(mode="after")
    def _labels(self) -> TargetSpec:
        if self.negative_label is not None and self.positive_label is None:
            raise ValueError("negative_label needs positive_label")
        if self.positive_label is not None and (self.min is not None or self.max is not None):
            raise ValueError("min/max apply to numeric targets, not to a labelled one (positive_label)")
        if self.positive_label is not None and self.negative_label is not None:
            from evergreen.etl.labels import label_text

            if label_text(self.positive_label) == label_text(self.negative_label):
                raise ValueError("positive_label and negative_label must differ")
        return self


class ScheduleSpec(_Model):
    """When the ETL runs. ``cron`` covers one data interval (one day for ``@daily``)."""

    cron: str = "@daily"
    start_date: dt.date
    timezone: str = "UTC"
    training_cron: str = "0 3 * * *"
    drift_sensor_cron: str = "*/30 * * * *"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value


class ExpectationsSpec(_Model):
    """Table-level data expectations beyond those derived from the feature list."""

    min_rows_per_day: int = Field(default=1, ge=0)
    max_rows_per_day: int | None = Field(default=None, ge=1)
    unique_keys: bool = True
    timestamps_within_partition: bool = True


class EtlSpec(_Model):
    """``on_missing_day``: a day without raw data (no file, or no rows of a historical file) fails or skips.
    ``extra_columns``: raw columns the spec does not name are always listed in the validation summary;
    ``warn`` also logs them, ``fail`` fails the day. ``ignore_columns`` are known and dropped silently."""

    on_missing_day: Literal["fail", "skip"] = "fail"
    sensor_timeout_minutes: float = Field(default=60.0, gt=0)
    sensor_poke_seconds: float = Field(default=60.0, ge=1)
    # Raw data for a day may arrive late; the sensor waits up to sensor_timeout_minutes.
    time_features: bool = True
    extra_columns: Literal["ignore", "warn", "fail"] = "warn"
    ignore_columns: list[ColumnName] = Field(default_factory=list)


class WindowSpec(_Model):
    """The trailing training window ending at ``as_of`` (inclusive)."""

    days: int = Field(default=28, ge=3)
    holdout_days: int = Field(default=3, ge=1)
    validation_days: int = Field(default=3, ge=1)
    min_days: int = Field(default=7, ge=3)
    max_missing_days: int = Field(default=7, ge=0)
    min_rows: int = Field(default=500, ge=10)
    max_rows_per_day: int | None = Field(default=None, ge=100)

    @model_validator(mode="after")
    def _fits(self) -> WindowSpec:
        if self.holdout_days + self.validation_days >= self.min_days:
            raise ValueError("holdout_days + validation_days must leave training days inside min_days")
        if self.min_days > self.days:
            raise ValueError("min_days cannot exceed days")
        return self


class ModelSpec(_Model):
    """XGBoost parameters and the registered model's name (default: the spec name)."""

    registered_name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    num_boost_round: int = Field(default=300, ge=1)
    early_stopping_rounds: int = Field(default=20, ge=1)
    seed: int = 42
    # How XGBoost sees missing values. "sentinel": a value below every real value (numerics) and a
    # reserved category (categoricals), so XGBoost's matrices stay dense: about half the memory and a
    # 1.6x faster fit when any feature has gaps, at the cost of the learned default direction (missing
    # values go with the lowest values unless a split isolates them). "native": NaN, XGBoost's own
    # sparsity-aware handling. See docs/performance.md for the measured trade-off.
    missing_values: Literal["sentinel", "native"] = "sentinel"


class PromotionSpec(_Model):
    """How a candidate that the gates would promote becomes champion.

    ``immediate``: at once. ``shadow``: it is registered as ``challenger``, scored beside the champion on
    live data, and promoted only once ``shadow_days`` outcome days show it beating the champion on the same
    labelled rows (and dropped if it does not); needs ``labels:``. The first model of a spec has no
    champion to shadow and is promoted at once. ``approval``: a person approves each promotion in the
    Airflow UI (a human-in-the-loop task showing the gate report); no answer within
    ``approval_timeout_hours`` means rejected."""

    mode: Literal["immediate", "shadow", "approval"] = "immediate"
    shadow_days: int = Field(default=3, ge=1)
    approval_timeout_hours: float = Field(default=24.0, gt=0)


FAIRNESS_DIFFERENCES = ("demographic_parity_difference", "equalized_odds_difference",
                        "true_positive_rate_difference", "false_positive_rate_difference")
FAIRNESS_RATIOS = ("demographic_parity_ratio", "equalized_odds_ratio")
FAIRNESS_REGRESSION = ("mean_prediction_difference",)


class FairnessGateSpec(_Model):
    """A group-fairness gate on the holdout (fairlearn's metrics), grouped by ``attribute`` (a feature or a
    ``use: attribute`` column). Classification metrics judge the decisions ``score >= threshold``; the
    ``*_difference`` metrics (largest minus smallest group) need ``max``, the ``*_ratio`` ones (smallest over
    largest) ``min``. ``mean_prediction_difference`` is the regression one. Groups under ``min_group_rows``
    holdout rows are left out; fewer than two groups leave the gate not evaluated (never a pass)."""

    attribute: ColumnName
    metric: Literal[FAIRNESS_DIFFERENCES + FAIRNESS_RATIOS + FAIRNESS_REGRESSION]  # type: ignore[valid-type]
    max: float | None = Field(default=None, ge=0)
    min: float | None = Field(default=None, ge=0, le=1)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    min_group_rows: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _bound(self) -> FairnessGateSpec:
        ratio = self.metric in FAIRNESS_RATIOS
        if ratio and (self.min is None or self.max is not None):
            raise ValueError(f"{self.metric} is a ratio (1 = parity): give min, not max")
        if not ratio and (self.max is None or self.min is not None):
            raise ValueError(f"{self.metric} is a difference (0 = parity): give max, not min")
        return self


class GatesSpec(_Model):
    """Promotion gates. Metric names are the evaluation module's (roc_auc, rmse, ...)."""

    primary_metric: str | None = None
    absolute: dict[str, float] = Field(default_factory=dict)
    min_lift_over_baseline: float = 0.0
    max_regression_vs_champion: float = 0.0
    slice_feature: str | None = None
    min_slice_metric: float | None = None
    max_slice_gap: float | None = None
    min_slice_rows: int = Field(default=50, ge=1)
    # A challenger that beats the champion on the same holdout replaces it even when it fails an absolute
    # threshold (overall or min_slice_metric) or the lift over the baseline ("below the bar", recorded and
    # logged); true: those block.
    bar_blocks: bool = False
    # The linear baseline is a candidate too: when it beats XGBoost on the holdout, it is the model judged
    # by the gates and registered (false: XGBoost is always the candidate and must beat the baseline).
    baseline_candidate: bool = True
    fairness: FairnessGateSpec | None = None


class ScoringSpec(_Model):
    """Batch scoring. ``explain_top_k``: each prediction row also carries its ``k`` largest SHAP reason codes
    (``reason_<i>`` and ``reason_<i>_shap``); 0 = none."""

    explain_top_k: int = Field(default=0, ge=0, le=20)


class DriftSpec(_Model):
    psi_threshold: float = Field(default=0.2, gt=0)
    ks_pvalue: float = Field(default=0.01, gt=0, lt=1)
    # A KS rejection also counts on its own when the distributions differ this much (the KS statistic):
    # a change of shape that PSI's bins miss must not hide behind a small PSI.
    ks_statistic: float = Field(default=0.3, gt=0, le=1)
    # Features that hold one value per day (a season, a holiday flag), besides those detected as such in
    # the training days: a day is compared with the reference's values, never with its whole distribution.
    calendar_features: list[str] = Field(default_factory=list)
    missing_rate_delta: float = Field(default=0.1, gt=0, le=1)
    max_drifted_share: float = Field(default=0.3, gt=0, le=1)
    key_features: list[str] = Field(default_factory=list)
    prediction_psi_threshold: float = Field(default=0.2, gt=0)
    # Prediction drift is always reported; it decides the verdict only when this is set, because models
    # with calendar features legitimately move their scores with the weekly cycle.
    prediction_drift_in_verdict: bool = False
    max_performance_drop: float = Field(default=0.05, ge=0)
    # Attribution drift: the features' shares of mean |SHAP| on the day against the holdout's (total
    # variation distance); always reported, in the verdict only when attribution_drift_in_verdict.
    attribution_shift_threshold: float = Field(default=0.2, gt=0, le=1)
    attribution_drift_in_verdict: bool = False
    # With late labels (``labels:``): the champion's realized primary metric, pooled over its last this
    # many outcome days, against its holdout metric; a drop beyond max_performance_drop retrains.
    performance_window_days: int = Field(default=7, ge=1)
    consecutive_reports: int = Field(default=1, ge=1)
    cooldown_hours: float = Field(default=24.0, ge=0)
    sensor_poke_seconds: float = Field(default=60.0, ge=1)
    sensor_timeout_minutes: float = Field(default=10.0, gt=0)
    monitor_cron: str = "0 6 * * *"


ALERT_EVENTS = ("task_failed", "data_quality_failed", "data_late", "drift_detected", "retrain_triggered",
                "promoted", "promoted_below_bar", "registered", "rejected", "rolled_back", "champion_stale")


class AlertRoute(_Model):
    """Where some events go: an Airflow connection (the secret lives there, never in a spec).

    ``webhook``: an HTTP connection (``host`` with or without ``http(s)://``, ``port``, ``schema`` as the
    scheme, ``extra.endpoint`` the path, ``extra.headers``; a password is sent as a bearer token), each
    alert POSTed as JSON. ``email``: an SMTP connection (Airflow's SMTP provider) and the ``to`` list."""

    channel: Literal["webhook", "email"]
    conn_id: str = Field(min_length=1)
    events: list[Literal[ALERT_EVENTS]] = Field(default_factory=lambda: list(ALERT_EVENTS))  # type: ignore[valid-type]
    to: list[str] = Field(default_factory=list)
    from_email: str | None = None

    @model_validator(mode="after")
    def _email_needs_recipients(self) -> AlertRoute:
        if self.channel == "email" and not self.to:
            raise ValueError("an email alert route needs `to` (a list of addresses)")
        return self


class AlertsSpec(_Model):
    """Alert routes and the two alerts that watch for something *not* happening."""

    routes: list[AlertRoute] = Field(default_factory=list)
    # champion_stale: no promotion for this many days while the latest drift reports keep saying drift.
    stale_champion_days: int = Field(default=14, ge=1)
    # data_late: an Airflow deadline on the ETL run, this long after its data interval ends.
    data_late_minutes: float | None = Field(default=None, gt=0)


class LabelsSpec(_Model):
    """Labels that arrive later than the features, from their own source (chargebacks, deliveries,
    tomorrow's weather). ``source`` holds one file (or glob) per *arrival* day (``{ds}`` in its path),
    each row a key and a label; a missing file is a day on which no labels arrived. ``keys``: the entity
    keys the labels join on (default: all of ``entity_keys``); ``column``: the label column (default: the
    target's name, read with the target's ``positive_label`` mapping); ``event_time``: a timestamp column
    naming the event's day, for keys that repeat across days. A label counts for a prediction day only if
    it arrived within ``max_delay_days`` of it; training as of day A sees the labels arrived by A.

    ``absent_label``: the label of a row for which none arrived within ``max_delay_days`` (a chargeback
    feed reports fraud only: ``absent_label: 0``). A day's labels then count only once its delay window
    has closed (it has *matured*): before that, the labels known are the positives alone, a biased sample
    that no model may train or be judged on."""

    source: SourceSpec
    keys: list[ColumnName] | None = None
    column: ColumnName | None = None
    event_time: ColumnName | None = None
    max_delay_days: int = Field(default=7, ge=0, le=366)
    absent_label: StrictInt | StrictFloat | str | None = None

    @model_validator(mode="after")
    def _daily(self) -> LabelsSpec:
        if self.source.kind != "daily_files":
            raise ValueError("labels.source must be daily_files: one file (or glob) per arrival day, '{ds}' in its path")
        return self


class SimulationSpec(_Model):
    """How ``evergreen simulate`` lands demo data for this spec."""

    generator: Literal["fraud", "delivery_eta"]
    rows_per_day: int = Field(default=2000, ge=10)


class PipelineSpec(_Model):
    name: Identifier
    description: str = ""
    owner: str = "evergreen"
    task_type: TaskType
    source: SourceSpec
    # Empty: the table has no natural key; the ETL derives ``row_key`` from each row's content.
    entity_keys: list[ColumnName] = Field(default_factory=list)
    timestamp_column: ColumnName
    # The timestamp assembled from parts, role -> raw column: {date, hour} or {year, month, day[, hour
    # [, minute]]}; the result is stored as ``timestamp_column`` (which the raw data then need not have).
    timestamp_parts: dict[Literal["date", "year", "month", "day", "hour", "minute"], ColumnName] | None = None
    derive_row_key: bool = False
    features: list[FeatureSpec] = Field(min_length=1)
    target: TargetSpec
    schedule: ScheduleSpec
    expectations: ExpectationsSpec = ExpectationsSpec()
    etl: EtlSpec = EtlSpec()
    window: WindowSpec = WindowSpec()
    model: ModelSpec = ModelSpec()
    gates: GatesSpec = GatesSpec()
    promotion: PromotionSpec = PromotionSpec()
    drift: DriftSpec = DriftSpec()
    scoring: ScoringSpec = ScoringSpec()
    labels: LabelsSpec | None = None
    alerts: AlertsSpec = AlertsSpec()
    simulation: SimulationSpec | None = None
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _row_key_when_no_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("entity_keys"):
            data = {**data, "entity_keys": [ROW_KEY], "derive_row_key": True}
        return data

    @model_validator(mode="after")
    def _columns_consistent(self) -> PipelineSpec:
        if self.derive_row_key and self.entity_keys != [ROW_KEY]:
            raise ValueError(f"derive_row_key is set by leaving entity_keys empty (the key is {ROW_KEY!r})")
        if self.timestamp_parts is not None:
            roles = set(self.timestamp_parts)
            if not ({"date"} <= roles <= {"date", "hour", "minute"}
                    or {"year", "month", "day"} <= roles <= {"year", "month", "day", "hour", "minute"}):
                raise ValueError("timestamp_parts: give {date[, hour[, minute]]} or {year, month, day[, hour[, minute]]}"
                                 f", got {sorted(roles)}")
        if self.task_type == TaskType.REGRESSION and self.target.positive_label is not None:
            raise ValueError("target.positive_label applies to binary_classification only")
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"features listed twice: {duplicated}")
        reserved = {self.target.name, self.timestamp_column, *self.entity_keys}
        clash = sorted(reserved.intersection(names))
        if clash:
            raise ValueError(f"features must not include the target, timestamp or keys: {clash}")
        feature_names = set(names)
        if self.gates.slice_feature and self.gates.slice_feature not in self.model_features:
            raise ValueError(f"gates.slice_feature {self.gates.slice_feature!r} is not a feature (time features "
                             f"count when etl.time_features is on)")
        unknown = sorted(set(self.drift.key_features) - set(self.model_features))
        if unknown:
            raise ValueError(f"drift.key_features are not model features: {unknown}")
        fairness = self.gates.fairness
        if fairness is not None:
            if fairness.attribute not in {*feature_names, *self.model_features}:
                raise ValueError(f"gates.fairness.attribute {fairness.attribute!r} is not a feature or attribute")
            regression = self.task_type == TaskType.REGRESSION
            if regression != (fairness.metric in FAIRNESS_REGRESSION):
                raise ValueError(f"gates.fairness.metric {fairness.metric!r} does not apply to {self.task_type.value}")
        if not self.model_features:
            raise ValueError("the model needs at least one feature with use: model")
        if self.promotion.mode == "shadow" and self.labels is None:
            raise ValueError("promotion.mode shadow judges the challenger on realized outcomes: it needs labels:")
        if self.labels is not None:
            if self.derive_row_key:
                raise ValueError("labels from a separate source join on entity keys: give entity_keys")
            stray = sorted(set(self.label_keys) - set(self.entity_keys))
            if stray:
                raise ValueError(f"labels.keys must be entity keys, not {stray}")
            if self.labels.absent_label is not None and self.absent_label_value is None:
                raise ValueError(f"labels.absent_label {self.labels.absent_label!r} is not a label the target "
                                 f"{self.target.name!r} can hold")
        return self

    @property
    def absent_label_value(self) -> float | None:
        """``labels.absent_label`` as the number training sees, by the target's mapping (None: unset, or
        not a label the target can hold)."""
        if self.labels is None or self.labels.absent_label is None:
            return None
        from evergreen.etl.labels import label_text

        text, target = label_text(self.labels.absent_label), self.target
        if self.task_type == TaskType.BINARY_CLASSIFICATION:
            if target.positive_label is None:
                return {"0": 0.0, "1": 1.0}.get(text)
            if text == label_text(target.positive_label):
                return 1.0
            return 0.0 if target.negative_label is None or text == label_text(target.negative_label) else None
        try:
            value = float(text)
        except ValueError:
            return None
        inside = (target.min is None or value >= target.min) and (target.max is None or value <= target.max)
        return value if inside else None

    @property
    def label_keys(self) -> list[str]:
        """The keys a separate label source joins on."""
        if self.labels is None:
            return []
        return list(self.labels.keys or self.entity_keys)

    @property
    def labels_may_be_missing(self) -> bool:
        """Rows without a label exist (``target.allow_missing``, or labels not arrived yet)."""
        return self.target.allow_missing or self.labels is not None

    @property
    def label_column(self) -> str:
        return (self.labels.column if self.labels is not None else None) or self.target.name

    @property
    def registered_model_name(self) -> str:
        return self.model.registered_name or self.name

    @property
    def primary_metric(self) -> str:
        if self.gates.primary_metric:
            return self.gates.primary_metric
        return "roc_auc" if self.task_type == TaskType.BINARY_CLASSIFICATION else "rmse"

    def feature(self, name: str) -> FeatureSpec:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def raw_columns(self) -> list[str]:
        """Every column a raw partition carries once read (the derived row key and assembled timestamp included)."""
        target = [] if self.labels is not None else [self.target.name]  # labels arrive on their own
        return [*self.entity_keys, self.timestamp_column, *(f.name for f in self.features), *target]

    @property
    def source_columns(self) -> set[str]:
        """Every raw column the spec names: what is not in here is an extra column."""
        keys = [] if self.derive_row_key else self.entity_keys
        parts = list((self.timestamp_parts or {}).values())
        timestamp = [] if self.timestamp_parts else [self.timestamp_column]
        target = [] if self.labels is not None else [self.target.name]
        return {*keys, *timestamp, *parts, *(f.name for f in self.features), *target, *self.etl.ignore_columns}

    @property
    def model_features(self) -> dict[str, FeatureType]:
        """Columns the model sees, in order: spec features (``use: model``), then derived time features."""
        types = {f.name: f.type for f in self.features if f.use == "model"}
        if self.etl.time_features:
            types.update(TIME_FEATURES)
        return types

    @property
    def attribute_columns(self) -> list[str]:
        """Stored columns the model never sees (``use: attribute``)."""
        return [f.name for f in self.features if f.use == "attribute"]

    @property
    def feature_table_columns(self) -> list[str]:
        """A feature partition's columns, in order: keys, timestamp, model features, attributes, target."""
        return [*self.entity_keys, self.timestamp_column, *self.model_features, *self.attribute_columns,
                self.target.name]

    def dag_id(self, kind: str) -> str:
        return f"{self.name}_{kind}"


def _format_error(path: Path, exc: ValidationError) -> str:
    lines = [f"invalid spec {path}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        hint = ""
        if isinstance(err.get("input"), bool) and err["type"] == "string_type":
            hint = " (YAML reads bare yes/no/on/off/true/false as booleans: quote the value)"
        lines.append(f"  {where}: {err['msg']}{hint}")
    return "\n".join(lines)


def load_spec(path: str | os.PathLike[str]) -> PipelineSpec:
    """Parse one spec file; raise SpecError naming the file and each bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"spec {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"spec {path} must be a mapping at the top level")
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_error(path, exc)) from exc


def spec_files(extra_dir: str | None = None) -> list[Path]:
    """Shipped spec files plus those in ``EVERGREEN_SPECS_DIR`` (or ``extra_dir``)."""
    folders = [SHIPPED_SPECS_DIR]
    extra = extra_dir if extra_dir is not None else settings.current().specs_dir
    if extra:
        folder = Path(extra)
        if not folder.is_dir():
            raise SpecError(f"{settings.SPECS_DIR}={extra} is not a folder")
        folders.append(folder)
    files: list[Path] = []
    for folder in folders:
        files.extend(sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")))
    return files


def load_valid_specs(extra_dir: str | None = None) -> tuple[dict[str, PipelineSpec], list[SpecError]]:
    """Every spec that parses, by name, and the error of each file that does not.

    One bad file must not take the other specs' DAGs down with it: the DAG factory builds the valid ones
    and ``dags/evergreen_spec_errors.py`` reports the rest as an import error naming file and field. A
    second file declaring a name already taken is an error of that second file.
    """
    specs: dict[str, PipelineSpec] = {}
    origin: dict[str, Path] = {}
    errors: list[SpecError] = []
    for path in spec_files(extra_dir):
        try:
            spec = load_spec(path)
        except SpecError as exc:
            errors.append(exc)
            continue
        if spec.name in specs:
            errors.append(SpecError(f"spec name {spec.name!r} is declared by both {origin[spec.name]} and {path}"))
            continue
        specs[spec.name] = spec
        origin[spec.name] = path
    return specs, errors


def load_specs(extra_dir: str | None = None) -> dict[str, PipelineSpec]:
    """Every spec by name; any invalid file (or two files declaring the same name) is an error."""
    specs, errors = load_valid_specs(extra_dir)
    if errors:
        raise SpecError("\n".join(str(e) for e in errors))
    return specs


def get_spec(name: str) -> PipelineSpec:
    """The spec named ``name`` (another file being invalid does not stop it from loading)."""
    specs, errors = load_valid_specs()
    try:
        return specs[name]
    except KeyError:
        invalid = "".join(f"\n{e}" for e in errors)
        raise SpecError(f"no valid spec named {name!r}; known: {sorted(specs)}{invalid}") from None
