"""Deterministic, realistic demo data for the shipped specs (``simulation.generator``).

Two generators: ``fraud`` (card transactions, binary target ``is_fraud``) and ``delivery_eta`` (food
orders, regression target ``delivery_minutes``). A day's data depends only on ``(seed, day, generator)``
and the keyword arguments, never on which other days are generated, so re-landing a day reproduces the
same bytes.

Labels are drawn from the features through a fixed relationship, which makes the three drift kinds clean:

* ``covariate``: feature distributions move, ``P(y | x)`` is unchanged;
* ``label_prior``: features are identical to the undrifted day, the positive rate (fraud) roughly
  triples / the target level (delivery) rises by 15 minutes;
* ``concept``: features are identical to the undrifted day, the relationship ``x -> y`` changes.

Every random component has its own RNG stream, so ``label_noise`` or a drift kind never perturbs the
parts it does not touch.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from evergreen import storage
from evergreen.spec import PipelineSpec

DRIFT_KINDS = ("covariate", "label_prior", "concept")

# Independent RNG streams per day; drift and label noise only ever change their own stream's use.
_VOLUME, _TIME, _FEATURES, _MISSING, _LABEL, _NOISE = range(6)

_NIGHT_HOURS = 6  # 00:00-05:59 UTC


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class _Day:
    """Per-day context: calendar facts and the seeded RNG streams."""

    def __init__(self, generator: str, ds: dt.date, seed: int, drifted: bool) -> None:
        self.ds = ds
        self.weekday = ds.weekday()
        self.is_weekend = self.weekday >= 5
        self.drifted = drifted
        self._entropy = [int(seed), ds.toordinal(), zlib.crc32(generator.encode())]

    def rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([*self._entropy, stream])


def _row_count(day: _Day, base: int, weekly: tuple[float, ...]) -> int:
    noise = float(np.exp(day.rng(_VOLUME).normal(0.0, 0.04)))
    return max(1, round(base * weekly[day.weekday] * noise))


def _timestamps(day: _Day, n: int, hour_weights: np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Sorted UTC timestamps inside the day (whole seconds) and their hour of day."""
    rng = day.rng(_TIME)
    p = hour_weights / hour_weights.sum()
    hours = rng.choice(24, size=n, p=p)
    seconds = np.sort(hours * 3600 + rng.integers(0, 3600, size=n))
    start_ns = pd.Timestamp(day.ds).value  # naive midnight, read as UTC
    values = (start_ns + seconds.astype(np.int64) * 1_000_000_000).astype("datetime64[ns]")
    index = pd.DatetimeIndex(values).tz_localize("UTC")
    return index, (seconds // 3600).astype(np.int64)


def _sample(
    rng: np.random.Generator, probs: np.ndarray, group: np.ndarray | None = None, n: int = 0
) -> np.ndarray:
    """Vectorised categorical draw: ``probs`` is one row, or one row per group indexed by ``group``."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim == 1:
        probs = probs[None, :]
        group = np.zeros(n, dtype=np.int64)
    assert group is not None
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    cum[:, -1] = 1.0
    u = rng.random(len(group))
    return (u[:, None] >= cum[group]).sum(axis=1)


def _shift_to_rate(z: np.ndarray, rate: float) -> float:
    """The logit offset ``d`` with ``mean(sigmoid(z + d)) == rate`` (bisection, deterministic)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(z + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _keys(prefix: str, ds: dt.date, n: int) -> np.ndarray:
    numbers = np.strings.zfill(np.arange(n).astype(str), 7)
    return np.strings.add(f"{prefix}{ds:%Y%m%d}-", numbers)


def _str_column(values: np.ndarray, labels: list[str]) -> pd.Series:
    return pd.Series(np.asarray(labels, dtype=object)[values], dtype="str")


# ---------------------------------------------------------------------------------------------- fraud

_MERCHANTS = ["grocery", "electronics", "travel", "fashion", "gaming", "restaurants", "fuel", "digital_goods"]
_CHANNELS = ["web", "app", "pos"]
_COUNTRIES = ["US", "GB", "DE", "FR", "ES", "BR", "IN", "NG", "MX", "CA"]

_FRAUD_WEEKLY = (0.95, 0.93, 0.95, 0.98, 1.06, 1.20, 1.16)
_FRAUD_HOURS = np.array(
    [0.9, 0.6, 0.45, 0.35, 0.35, 0.5, 1.0, 1.8, 2.8, 3.5, 4.0, 4.4,
     4.8, 4.6, 4.3, 4.2, 4.4, 4.8, 5.0, 4.8, 4.2, 3.4, 2.5, 1.6]
)  # fmt: skip
_FRAUD_WEEKEND_HOURS = _FRAUD_HOURS * np.array(
    [1.6, 1.6, 1.5] + [1.0] * 4 + [0.6, 0.7, 0.85] + [1.0] * 12 + [1.3, 1.4]
)

# merchant mix per channel (rows: web, app, pos; columns: _MERCHANTS)
_MERCHANT_BY_CHANNEL = np.array(
    [
        [0.08, 0.20, 0.15, 0.17, 0.10, 0.03, 0.00, 0.27],
        [0.15, 0.10, 0.08, 0.15, 0.12, 0.20, 0.05, 0.15],
        [0.32, 0.07, 0.03, 0.12, 0.02, 0.24, 0.20, 0.00],
    ]
)
# covariate drift blends the merchant mix towards digital goods and electronics
_MERCHANT_DRIFT = np.array([0.0, 0.45, 0.0, 0.0, 0.05, 0.0, 0.0, 0.50])
_MERCHANT_LOG_MEAN = np.array([3.6, 5.2, 5.7, 4.3, 3.2, 3.4, 3.9, 2.9])
_COUNTRY_P = np.array([0.34, 0.12, 0.10, 0.08, 0.06, 0.07, 0.09, 0.03, 0.05, 0.06])


def _fraud(day: _Day, n: int, drift: str | None) -> tuple[dict[str, object], np.ndarray, Callable]:
    """Features, the fraud logit, and the post-concept-drift logit (computed on demand).

    Covariate drift models a shift of the business towards web sales of digital goods and electronics
    with bigger baskets and riskier devices, from established customers (fewer new accounts, fewer
    international payments), so the fraud rate moves only a little although ``P(y | x)`` is unchanged.
    """
    covariate = day.drifted and drift == "covariate"
    ts, hour = _timestamps(day, n, _FRAUD_WEEKEND_HOURS if day.is_weekend else _FRAUD_HOURS)
    rng = day.rng(_FEATURES)

    channel = _sample(rng, [0.45, 0.32, 0.23] if covariate else [0.27, 0.30, 0.43], n=n)
    web, pos = channel == _CHANNELS.index("web"), channel == _CHANNELS.index("pos")
    card_present = rng.random(n) < np.where(pos, 0.96, 0.02)
    merchant_p = _MERCHANT_BY_CHANNEL
    if covariate:
        merchant_p = 0.65 * merchant_p + 0.35 * _MERCHANT_DRIFT
    merchant = _sample(rng, merchant_p, channel)
    digital = np.isin(merchant, [_MERCHANTS.index("digital_goods"), _MERCHANTS.index("gaming")])
    travel = merchant == _MERCHANTS.index("travel")
    country = _sample(rng, _COUNTRY_P, n=n)
    far_country = np.isin(country, [_COUNTRIES.index(c) for c in ("BR", "NG", "MX")])
    p_intl = 0.04 + 0.25 * travel + 0.07 * web + 0.05 * digital + 0.04 * far_country
    international = rng.random(n) < p_intl * (0.7 if covariate else 1.0)

    new_account = rng.random(n) < (0.07 if covariate else 0.11)
    age = np.where(new_account, rng.exponential(30.0, n), rng.lognormal(np.log(1100.0), 0.8, n))
    age = np.clip(np.floor(age), 0, 20000).astype(np.int64)

    spend = rng.normal(0.45 if covariate else 0.0, 0.45, n)  # customer's spend level (log scale)
    amount = np.exp(_MERCHANT_LOG_MEAN[merchant] + spend + rng.normal(0.0, 0.65, n))
    amount = np.clip(np.round(amount, 2), 0.5, 100000.0)
    avg_amount = np.clip(np.round(np.exp(3.9 + spend + rng.normal(0.0, 0.3, n)), 2), 0.5, 100000.0)

    burst = rng.random(n) < 0.03
    txn_count = rng.poisson(np.where(burst, 12.0, 1.5 * np.exp(rng.normal(0.0, 0.6, n))))
    txn_count = np.clip(txn_count, 0, 1000).astype(np.int64)

    distance = np.where(
        international, rng.lognormal(np.log(1500.0), 0.9, n), rng.lognormal(np.log(6.0), 1.1, n)
    )
    distance = np.clip(np.round(distance, 1), 0.0, 20100.0)

    risky = rng.random(n) < 0.06  # emulators, rooted phones, known-bad fingerprints
    base_a, base_b = (2.8, 7.2) if covariate else (2.0, 9.0)
    device_risk = np.where(risky, rng.beta(6.0, 3.0, n), rng.beta(base_a, base_b, n))
    device_risk = np.clip(np.round(device_risk, 3), 0.0, 1.0)

    failed = rng.poisson(np.where(rng.random(n) < (0.03 if covariate else 0.05), 3.0, 0.25)).astype(np.int64)

    # Missing values: a 30-day average needs 30 days of history; location and device signals drop out.
    miss = day.rng(_MISSING)
    avg_missing = np.where(age < 30, miss.random(n) < 0.95, miss.random(n) < 0.01)
    dist_missing = miss.random(n) < np.where(pos, 0.03, 0.065)
    risk_missing = miss.random(n) < 0.03

    night = hour < _NIGHT_HOURS
    log_ratio = np.log(amount / avg_amount)
    z_normal = (
        -5.1
        + 2.2 * np.clip(log_ratio - 0.8, 0.0, 2.5)
        + 3.8 * ((amount > 200) & ~card_present & (age < 90))
        + 1.35 * night
        + 2.7 * (digital & international)
        + 6.8 * np.clip(device_risk - 0.45, 0.0, None)
        + 1.6 * (failed >= 3)
        + 2.2 * (txn_count >= 8)
        + 1.35 * ((distance > 300) & ~card_present)
        + 0.4 * web
        + 0.7 * (age < 30)
        + 0.55 * (country == _COUNTRIES.index("NG"))
        + 0.3 * day.is_weekend
    )

    def concept_logit() -> np.ndarray:
        # Skimmed cards: small card-present purchases on established accounts, daytime, at fuel/grocery.
        return (
            1.8 * ((amount < 40) & card_present)
            + 1.2 * np.isin(merchant, [_MERCHANTS.index("fuel"), _MERCHANTS.index("grocery")])
            + 0.8 * ((hour >= 9) & (hour < 18))
            - 0.8 * night
            + 0.7 * (age > 730)
            - 1.5 * (device_risk - 0.2)
            + 0.6 * (txn_count >= 3)
            - 0.6 * web
        )

    columns: dict[str, object] = {
        "event_ts": ts,
        "amount": amount,
        "merchant_category": _str_column(merchant, _MERCHANTS),
        "channel": _str_column(channel, _CHANNELS),
        "country": _str_column(country, _COUNTRIES),
        "card_present": card_present,
        "is_international": international,
        "account_age_days": age,
        "txn_count_24h": txn_count,
        "avg_amount_30d": np.where(avg_missing, np.nan, avg_amount),
        "distance_from_home_km": np.where(dist_missing, np.nan, distance),
        "device_risk_score": np.where(risk_missing, np.nan, device_risk),
        "failed_logins_7d": failed,
    }
    return columns, z_normal, concept_logit


def _fraud_target(
    day: _Day, z: np.ndarray, concept: Callable, drift: str | None, label_noise: float
) -> np.ndarray:
    n = len(z)
    if day.drifted and drift == "label_prior":
        z = z + _shift_to_rate(z, min(3.0 * float(_sigmoid(z).mean()), 0.6))
    elif day.drifted and drift == "concept":
        z2 = concept()
        z = z2 + _shift_to_rate(z2, float(_sigmoid(z).mean()))
    y = (day.rng(_LABEL).random(n) < _sigmoid(z)).astype(np.int64)
    if label_noise > 0:
        flip = day.rng(_NOISE).choice(n, size=round(label_noise * n), replace=False)
        y[flip] = 1 - y[flip]
    return y


# --------------------------------------------------------------------------------------- delivery_eta

_RESTAURANTS = ["fast_food", "pizza", "asian", "grill", "cafe", "fine_dining"]
_CITIES = ["north", "south", "east", "west", "center"]
_WEATHER = ["clear", "cloudy", "rain", "snow"]

_DELIVERY_WEEKLY = (0.90, 0.88, 0.90, 0.95, 1.10, 1.25, 1.20)
_DELIVERY_HOURS = np.array(
    [0.3, 0.2, 0.12, 0.08, 0.06, 0.08, 0.2, 0.5, 0.9, 1.1, 1.6, 3.2,
     4.2, 3.6, 2.0, 1.4, 1.5, 2.3, 4.0, 4.8, 4.2, 2.8, 1.6, 0.8]
)  # fmt: skip
_PEAK_HOURS = [11, 12, 13, 18, 19, 20]
_RESTAURANT_P = np.array([0.26, 0.20, 0.19, 0.12, 0.15, 0.08])
_RESTAURANT_ITEMS = np.array([1.2, 1.5, 1.8, 1.6, 0.7, 2.5])
_RESTAURANT_PREP = np.array([8.0, 14.0, 13.0, 17.0, 6.0, 26.0])
_CITY_P = np.array([0.18, 0.18, 0.17, 0.17, 0.30])
_WEATHER_P = np.array([0.50, 0.28, 0.17, 0.05])
_WEATHER_DRIFT_P = np.array([0.22, 0.23, 0.38, 0.17])
_WEATHER_SLOWDOWN = np.array([1.0, 1.05, 1.3, 1.75])
_WEATHER_SLOWDOWN_CONCEPT = np.array([1.0, 1.1, 1.7, 2.6])


def _delivery(day: _Day, n: int, drift: str | None) -> tuple[dict[str, object], np.ndarray, Callable]:
    """Features, the delivery minutes (before noise in labels), and the post-concept-drift minutes."""
    covariate = day.drifted and drift == "covariate"
    ts, hour = _timestamps(day, n, _DELIVERY_HOURS * (1.0 + 0.3 * day.is_weekend * (np.arange(24) < 2)))
    rng = day.rng(_FEATURES)

    peak = np.isin(hour, _PEAK_HOURS)
    city = _sample(rng, _CITY_P, n=n)
    center = city == _CITIES.index("center")
    restaurant = _sample(rng, _RESTAURANT_P, n=n)
    items = 1 + rng.poisson(_RESTAURANT_ITEMS[restaurant] + 0.3 * day.is_weekend)
    items = np.clip(items, 1, 100).astype(np.int64)
    distance = rng.lognormal(np.log(3.2) + 0.45 * covariate - 0.25 * center, 0.55, n)
    distance = np.clip(np.round(distance, 2), 0.1, 60.0)
    weather = _sample(rng, _WEATHER_DRIFT_P if covariate else _WEATHER_P, n=n)
    courier_load = np.clip(rng.poisson(2.5 + 3.0 * peak + 1.0 * day.is_weekend), 0, 20).astype(np.int64)
    prep_true = _RESTAURANT_PREP[restaurant] * (1.0 + 0.25 * peak) + 1.0 * items + rng.gamma(2.0, 1.5, n)
    prep_estimate = np.clip(np.round(prep_true * np.exp(rng.normal(0.0, 0.15, n)), 1), 0.0, 180.0)
    rating = np.clip(np.round(4.95 - rng.gamma(2.0, 0.17, n), 2), 1.0, 5.0)
    noise = rng.normal(0.0, 4.0, n) + np.where(rng.random(n) < 0.03, rng.exponential(20.0, n), 0.0)

    miss = day.rng(_MISSING)
    prep_missing = miss.random(n) < 0.05
    rating_missing = miss.random(n) < 0.08  # new couriers have no rating yet

    def minutes(concept: bool) -> np.ndarray:
        if concept:  # road works outside the center, a courier shortage, harsher weather
            per_km = np.where(center, 4.5, 5.0)
            slowdown = _WEATHER_SLOWDOWN_CONCEPT[weather]
            load_coef, peak_coef = 3.2, 12.0
        else:
            per_km = np.where(center, 4.2, 3.0)
            slowdown = _WEATHER_SLOWDOWN[weather]
            load_coef, peak_coef = 1.3, 4.0
        return (
            6.0
            + prep_true
            + distance * per_km * slowdown
            + load_coef * courier_load
            + peak_coef * peak
            + 3.0 * day.is_weekend
            + 4.0 * (4.8 - rating)
            + noise
        )

    columns: dict[str, object] = {
        "ordered_at": ts,
        "distance_km": distance,
        "items": items,
        "restaurant_type": _str_column(restaurant, _RESTAURANTS),
        "city": _str_column(city, _CITIES),
        "weather": _str_column(weather, _WEATHER),
        "is_peak": peak,
        "courier_load": courier_load,
        "prep_time_estimate": np.where(prep_missing, np.nan, prep_estimate),
        "courier_rating": np.where(rating_missing, np.nan, rating),
    }
    return columns, minutes(False), lambda: minutes(True)


def _delivery_target(
    day: _Day, y: np.ndarray, concept: Callable, drift: str | None, label_noise: float
) -> np.ndarray:
    if day.drifted and drift == "label_prior":
        y = y + 15.0
    elif day.drifted and drift == "concept":
        y = concept()
    y = np.clip(y, 1.0, 400.0)
    n = len(y)
    if label_noise > 0:
        rng = day.rng(_NOISE)
        replaced = rng.choice(n, size=round(label_noise * n), replace=False)
        y[replaced] = rng.choice(y, size=len(replaced), replace=True)  # plausible: the day's own targets
    return np.round(y, 1)


_GENERATORS = {
    "fraud": ("t", "event_ts", _FRAUD_WEEKLY, _fraud, _fraud_target),
    "delivery_eta": ("o", "ordered_at", _DELIVERY_WEEKLY, _delivery, _delivery_target),
}


# ---------------------------------------------------------------------------------------------- API


def _check(spec: PipelineSpec, drift: str | None, drift_start: dt.date | None, label_noise: float) -> str:
    if spec.simulation is None:
        raise ValueError(f"spec {spec.name!r} has no simulation section")
    if spec.source.kind == "historical":
        raise ValueError(f"spec {spec.name!r} has a historical source; simulation lands daily files only")
    generator = spec.simulation.generator
    if generator not in _GENERATORS:
        raise ValueError(f"unknown generator {generator!r}")
    if drift is not None:
        if drift not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {drift!r}; expected one of {DRIFT_KINDS}")
        if drift_start is None:
            raise ValueError("drift_start is required when drift is given")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if len(spec.entity_keys) != 1:
        raise ValueError(f"the {generator} generator produces one entity key, spec has {spec.entity_keys}")
    return generator


def generate_day(
    spec: PipelineSpec,
    ds: dt.date,
    *,
    seed: int = 0,
    drift: str | None = None,
    drift_start: dt.date | None = None,
    label_noise: float = 0.0,
    rows: int | None = None,
) -> pd.DataFrame:
    """One day of raw data with exactly ``spec.raw_columns``, sorted by timestamp."""
    generator = _check(spec, drift, drift_start, label_noise)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if rows is not None and rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    assert spec.simulation is not None
    prefix, ts_name, weekly, make_features, make_target = _GENERATORS[generator]
    drifted = drift is not None and drift_start is not None and ds >= drift_start
    day = _Day(generator, ds, seed, drifted)
    n = _row_count(day, rows if rows is not None else spec.simulation.rows_per_day, weekly)

    columns, base_target, concept = make_features(day, n, drift)
    target = make_target(day, base_target, concept, drift, label_noise)

    unknown = sorted({f.name for f in spec.features} - set(columns))
    if unknown:
        raise ValueError(f"the {generator} generator does not produce features {unknown}")
    data: dict[str, object] = {spec.entity_keys[0]: pd.Series(_keys(prefix, ds, n), dtype="str")}
    data[spec.timestamp_column] = columns[ts_name]
    for feature in spec.features:
        data[feature.name] = columns[feature.name]
    data[spec.target.name] = target
    # With a separate label source the raw day has no target: land_days writes the labels on their own.
    return pd.DataFrame(data)[[*spec.raw_columns, *([spec.target.name] if spec.labels is not None else [])]]


LATE_LABEL_SHARE = 0.05  # of the simulated labels arrive 1-3 days after max_delay_days: counted as late


def label_arrivals(spec: PipelineSpec, ds: dt.date, keys: pd.Series) -> np.ndarray:
    """Days after ``ds`` each row's label arrives: uniform over 0..max_delay_days (hashed from the key, so
    reruns agree), and :data:`LATE_LABEL_SHARE` of them late."""
    assert spec.labels is not None
    hashed = pd.util.hash_pandas_object(keys.astype("str"), index=False).to_numpy()
    delay = (hashed % np.uint64(spec.labels.max_delay_days + 1)).astype("int64")
    late = (hashed // np.uint64(1000)) % np.uint64(1000) < np.uint64(int(LATE_LABEL_SHARE * 1000))
    return np.where(late, spec.labels.max_delay_days + 1 + (hashed % np.uint64(3)).astype("int64"), delay)


def land_labels(spec: PipelineSpec, ds: dt.date, frame: pd.DataFrame) -> list[str]:
    """The labels of prediction day ``ds`` as the files they arrive in: one file per arrival day,
    ``from-<ds>.parquet`` in that day's folder (the label source's path is a glob over those files).
    With ``labels.absent_label`` the feed reports only the other labels (a chargeback feed: the frauds)."""
    assert spec.labels is not None
    column = spec.label_column
    if spec.absent_label_value is not None:
        from evergreen.outcomes import label_values

        frame = frame[(label_values(spec, frame[spec.target.name]) != spec.absent_label_value).to_numpy()]
    arrivals = label_arrivals(spec, ds, frame[spec.entity_keys[0]])
    written = []
    # A file for every arrival day a label could have (empty or not): landing a day again replaces them all.
    for delay in range(spec.labels.max_delay_days + 4):
        part = frame.loc[arrivals == delay, [*spec.label_keys, spec.target.name]].rename(
            columns={spec.target.name: column}).reset_index(drop=True)
        arrived = (ds + dt.timedelta(days=int(delay))).isoformat()
        folder = spec.labels.source.path.format(ds=arrived).rsplit("/", 1)[0]
        path = storage.resolve(f"{folder}/from-{ds.isoformat()}.{spec.labels.source.format}")
        data = storage.frame_to_parquet_bytes(part) if spec.labels.source.format == "parquet" else \
            part.to_csv(index=False).encode("utf-8")
        storage.write_bytes_atomic(path, data)
        written.append(str(path))
    return written


def land_days(
    spec: PipelineSpec,
    start: dt.date,
    end: dt.date,
    *,
    seed: int = 0,
    drift: str | None = None,
    drift_start: dt.date | None = None,
    label_noise: float = 0.0,
    rows: int | None = None,
    skip_days: Iterable[dt.date] = (),
) -> list[str]:
    """Write each day's raw file (``start`` to ``end`` inclusive, minus ``skip_days``); return the URIs."""
    _check(spec, drift, drift_start, label_noise)
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    skip = set(skip_days)
    written: list[str] = []
    ds = start
    while ds <= end:
        if ds not in skip:
            frame = generate_day(
                spec, ds, seed=seed, drift=drift, drift_start=drift_start, label_noise=label_noise, rows=rows
            )
            if spec.labels is not None:
                written += land_labels(spec, ds, frame)
                frame = frame.drop(columns=[spec.target.name])
            if spec.source.format == "parquet":
                data = storage.frame_to_parquet_bytes(frame)
            else:
                data = frame.to_csv(index=False).encode("utf-8")
            path = storage.resolve(spec.source.path.format(ds=ds.isoformat()))
            storage.write_bytes_atomic(path, data)
            written.append(str(path))
        ds += dt.timedelta(days=1)
    return written
