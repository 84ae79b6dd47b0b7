"""The demo-data simulator: deterministic, schema-conforming, seasonal, and drifting on request."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evergreen import simulate
from evergreen.spec import FeatureType, SourceSpec, get_spec
from helpers import same_day_spec
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

START = dt.date(2026, 10, 5)  # a Monday
DRIFT_START = START + dt.timedelta(days=7)
SPEC_NAMES = ["fraud", "delivery_eta"]


@pytest.fixture(autouse=True)
def storage_root(tmp_path, monkeypatch):
    monkeypatch.setenv("EVERGREEN_STORAGE_ROOT", str(tmp_path / "storage"))
    return tmp_path / "storage"


@pytest.fixture(scope="module")
def fraud():
    return same_day_spec("fraud")


@pytest.fixture(scope="module")
def delivery():
    return get_spec("delivery_eta")


def days(spec, first: int, count: int, **kwargs) -> pd.DataFrame:
    frames = [
        simulate.generate_day(spec, START + dt.timedelta(days=first + i), **kwargs) for i in range(count)
    ]
    return pd.concat(frames, ignore_index=True)


def numeric_matrix(spec, frame: pd.DataFrame) -> pd.DataFrame:
    names = [f.name for f in spec.features if f.type in (FeatureType.NUMERIC, FeatureType.BOOLEAN)]
    return frame[names].astype(float).fillna(-1.0)


def local_path(uri: str) -> Path:
    assert uri.startswith("file://")
    return Path(uri.removeprefix("file://"))


# ------------------------------------------------------------------------------------- landing


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_land_days_is_deterministic_and_inclusive(name, storage_root):
    spec = same_day_spec(name)
    end = START + dt.timedelta(days=2)
    uris = simulate.land_days(spec, START, end, seed=7)
    assert len(uris) == 3
    expected = storage_root / spec.source.path.format(ds=START.isoformat())
    assert local_path(uris[0]) == expected
    first = [local_path(u).read_bytes() for u in uris]

    again = simulate.land_days(spec, START, end, seed=7)
    assert again == uris
    assert [local_path(u).read_bytes() for u in again] == first
    # a day does not depend on which other days are generated
    alone = simulate.land_days(spec, end, end, seed=7)
    assert local_path(alone[0]).read_bytes() == first[-1]
    # a different seed gives different data
    other = simulate.land_days(spec, START, START, seed=8)
    assert local_path(other[0]).read_bytes() != first[0]
    assert not list(local_path(uris[0]).parent.glob(".*tmp"))  # atomic writes leave no temp files


def test_land_days_skips_days(fraud):
    end = START + dt.timedelta(days=3)
    uris = simulate.land_days(fraud, START, end, skip_days=[START + dt.timedelta(days=1)], rows=100)
    assert len(uris) == 3
    assert "ds=" + (START + dt.timedelta(days=1)).isoformat() not in " ".join(uris)


def test_parquet_and_csv_files_read_back(fraud, delivery):
    (parquet_uri,) = simulate.land_days(fraud, START, START, rows=300)
    frame = pd.read_parquet(local_path(parquet_uri))
    assert list(frame.columns) == fraud.raw_columns
    assert isinstance(frame["event_ts"].dtype, pd.DatetimeTZDtype)
    assert str(frame["event_ts"].dt.tz) == "UTC"
    pd.testing.assert_frame_equal(frame, simulate.generate_day(fraud, START, rows=300), check_dtype=False)

    (csv_uri,) = simulate.land_days(delivery, START, START, rows=300)
    text = local_path(csv_uri).read_text(encoding="utf-8")
    assert text.splitlines()[0].split(",") == delivery.raw_columns
    assert "+00:00" in text.splitlines()[1]
    back = pd.read_csv(io.StringIO(text))
    assert len(back) == len(simulate.generate_day(delivery, START, rows=300))
    stamps = pd.to_datetime(back["ordered_at"], utc=True)
    assert stamps.min() >= pd.Timestamp(START, tz="UTC")
    # floats are rounded so files stay small
    assert back["distance_km"].map(lambda v: len(repr(v))).max() <= 6


# ------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_generated_day_respects_the_spec(name):
    spec = same_day_spec(name)
    frame = days(spec, 0, 2)
    day_one = simulate.generate_day(spec, START)
    assert list(day_one.columns) == spec.raw_columns
    key = spec.entity_keys[0]
    assert frame[key].is_unique  # within and across days
    assert pd.api.types.is_string_dtype(frame[key])

    ts = day_one[spec.timestamp_column]
    assert isinstance(ts.dtype, pd.DatetimeTZDtype) and str(ts.dt.tz) == "UTC"
    assert ts.is_monotonic_increasing
    assert ts.min() >= pd.Timestamp(START, tz="UTC")
    assert ts.max() < pd.Timestamp(START + dt.timedelta(days=1), tz="UTC")
    hours = ts.dt.hour
    night_per_hour, day_per_hour = (hours < 5).sum() / 5, hours.between(10, 20).sum() / 11
    assert night_per_hour < 0.5 * day_per_hour  # fewer events at night

    for feature in spec.features:
        column = frame[feature.name]
        if feature.type == FeatureType.CATEGORICAL:
            assert pd.api.types.is_string_dtype(column)
            assert set(column.unique()) <= set(feature.allowed_values), feature.name
        elif feature.type == FeatureType.BOOLEAN:
            assert pd.api.types.is_bool_dtype(column), feature.name
        else:
            assert pd.api.types.is_numeric_dtype(column), feature.name
            if feature.min is not None:
                assert column.min() >= feature.min, feature.name
            if feature.max is not None:
                assert column.max() <= feature.max, feature.name
        null_fraction = column.isna().mean()
        if feature.nullable and feature.max_null_fraction > 0:
            assert 0 < null_fraction <= feature.max_null_fraction, feature.name
        else:
            assert null_fraction == 0, feature.name

    target = frame[spec.target.name]
    assert target.notna().all()
    assert target.min() >= spec.target.min and target.max() <= spec.target.max


def test_fraud_target_and_missingness_are_realistic(fraud):
    frame = days(fraud, 0, 7)
    assert pd.api.types.is_integer_dtype(frame["is_fraud"])
    assert set(frame["is_fraud"].unique()) == {0, 1}
    assert 0.04 <= frame["is_fraud"].mean() <= 0.09
    # the 30-day average is missing mostly for young accounts
    young = frame["account_age_days"] < 30
    assert frame.loc[young, "avg_amount_30d"].isna().mean() > 0.8
    assert frame.loc[~young, "avg_amount_30d"].isna().mean() < 0.03
    # behaviour is seasonal: more fraud at night and on weekends
    night = frame["event_ts"].dt.hour < 6
    assert frame.loc[night, "is_fraud"].mean() > 1.3 * frame.loc[~night, "is_fraud"].mean()
    weekend = frame["event_ts"].dt.day_of_week >= 5
    assert frame.loc[weekend, "is_fraud"].mean() > frame.loc[~weekend, "is_fraud"].mean()


def test_fraud_signal_is_learnable_but_nonlinear(fraud):
    xgb = pytest.importorskip("xgboost")
    train, test = days(fraud, 0, 6), days(fraud, 6, 2)
    x_train, x_test = numeric_matrix(fraud, train), numeric_matrix(fraud, test)
    model = xgb.XGBClassifier(n_estimators=150, max_depth=4, learning_rate=0.1, n_jobs=2)
    model.fit(x_train, train["is_fraud"])
    boosted = roc_auc_score(test["is_fraud"], model.predict_proba(x_test)[:, 1])
    linear = LogisticRegression(max_iter=500).fit(np.log1p(x_train.clip(lower=0)), train["is_fraud"])
    logistic = roc_auc_score(test["is_fraud"], linear.predict_proba(np.log1p(x_test.clip(lower=0)))[:, 1])
    assert 0.8 <= boosted <= 0.95
    assert logistic < boosted


def test_delivery_target_is_predictable(delivery):
    frame = days(delivery, 0, 4)
    assert pd.api.types.is_float_dtype(frame["delivery_minutes"])
    train, test = frame.iloc[: len(frame) * 3 // 4], frame.iloc[len(frame) * 3 // 4 :]
    features = pd.get_dummies(frame[[f.name for f in delivery.features]], dtype=float)
    features = features.fillna(features.median())
    model = LinearRegression().fit(features.loc[train.index], train["delivery_minutes"])
    r2 = r2_score(test["delivery_minutes"], model.predict(features.loc[test.index]))
    assert 0.6 <= r2 <= 0.9
    peak = frame["is_peak"]
    assert frame.loc[peak, "delivery_minutes"].mean() > frame.loc[~peak, "delivery_minutes"].mean() + 3


def test_weekly_seasonality_in_volume(fraud, delivery):
    for spec in (fraud, delivery):
        counts = pd.Series(
            {
                START + dt.timedelta(days=i): len(simulate.generate_day(spec, START + dt.timedelta(days=i)))
                for i in range(28)
            }
        )
        weekend = np.array([d.weekday() >= 5 for d in counts.index])
        assert counts[weekend].mean() > 1.15 * counts[~weekend].mean()
        assert 0.8 * spec.simulation.rows_per_day < counts.mean() < 1.25 * spec.simulation.rows_per_day
    assert len(simulate.generate_day(fraud, START, rows=500)) == pytest.approx(500, rel=0.2)


def test_large_days_generate_requested_volume(fraud, delivery):
    # Speed is measured by the benchmarks (make bench); this only checks that large days work.
    for spec in (fraud, delivery):
        frame = simulate.generate_day(spec, START, rows=100_000)
        assert len(frame) == pytest.approx(100_000, rel=0.25)
        assert frame[spec.entity_keys[0]].is_unique


# ------------------------------------------------------------------------------------- drift


def test_drift_only_applies_from_drift_start(fraud):
    before = DRIFT_START - dt.timedelta(days=1)
    for kind in simulate.DRIFT_KINDS:
        drifted = simulate.generate_day(fraud, before, drift=kind, drift_start=DRIFT_START)
        pd.testing.assert_frame_equal(drifted, simulate.generate_day(fraud, before))
        after = simulate.generate_day(fraud, DRIFT_START, drift=kind, drift_start=DRIFT_START)
        assert not after.equals(simulate.generate_day(fraud, DRIFT_START))


def test_covariate_drift_moves_features_not_the_fraud_rate(fraud):
    pre = days(fraud, 7, 7)
    post = days(fraud, 7, 7, drift="covariate", drift_start=DRIFT_START)
    assert post["amount"].mean() > 1.4 * pre["amount"].mean()
    assert (post["channel"] == "web").mean() > (pre["channel"] == "web").mean() + 0.1
    digital = ["digital_goods", "electronics"]
    assert (
        post["merchant_category"].isin(digital).mean() > pre["merchant_category"].isin(digital).mean() + 0.1
    )
    assert post["device_risk_score"].mean() > pre["device_risk_score"].mean() + 0.05
    assert 0.7 < post["is_fraud"].mean() / pre["is_fraud"].mean() < 1.5


def test_covariate_drift_in_delivery(delivery):
    pre = days(delivery, 7, 4)
    post = days(delivery, 7, 4, drift="covariate", drift_start=DRIFT_START)
    assert post["distance_km"].mean() > 1.3 * pre["distance_km"].mean()
    wet = ["rain", "snow"]
    assert post["weather"].isin(wet).mean() > pre["weather"].isin(wet).mean() + 0.2


def test_label_prior_drift_changes_only_the_target(fraud, delivery):
    pre = days(fraud, 7, 4)
    post = days(fraud, 7, 4, drift="label_prior", drift_start=DRIFT_START)
    pd.testing.assert_frame_equal(pre.drop(columns="is_fraud"), post.drop(columns="is_fraud"))
    assert 2.3 < post["is_fraud"].mean() / pre["is_fraud"].mean() < 3.7

    pre = days(delivery, 7, 2)
    post = days(delivery, 7, 2, drift="label_prior", drift_start=DRIFT_START)
    pd.testing.assert_frame_equal(pre.drop(columns="delivery_minutes"), post.drop(columns="delivery_minutes"))
    shift = post["delivery_minutes"].mean() - pre["delivery_minutes"].mean()
    assert 13 < shift < 17


def test_concept_drift_degrades_a_model_trained_before(fraud, delivery):
    train, holdout = days(fraud, 0, 5), days(fraud, 5, 2)
    post = days(fraud, 7, 2, drift="concept", drift_start=DRIFT_START)
    assert post.drop(columns="is_fraud").equals(days(fraud, 7, 2).drop(columns="is_fraud"))
    assert 0.6 < post["is_fraud"].mean() / holdout["is_fraud"].mean() < 1.6
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(numeric_matrix(fraud, train), train["is_fraud"])
    before = roc_auc_score(holdout["is_fraud"], model.predict_proba(numeric_matrix(fraud, holdout))[:, 1])
    after = roc_auc_score(post["is_fraud"], model.predict_proba(numeric_matrix(fraud, post))[:, 1])
    assert before > 0.75
    assert after < before - 0.2

    train, holdout = days(delivery, 0, 4), days(delivery, 5, 2)
    post = days(delivery, 7, 2, drift="concept", drift_start=DRIFT_START)
    regression = LinearRegression().fit(numeric_matrix(delivery, train), train["delivery_minutes"])
    before = r2_score(holdout["delivery_minutes"], regression.predict(numeric_matrix(delivery, holdout)))
    after = r2_score(post["delivery_minutes"], regression.predict(numeric_matrix(delivery, post)))
    assert after < before - 0.3


# ------------------------------------------------------------------------------------- label noise


def test_label_noise_flips_about_the_requested_fraction(fraud, delivery):
    clean = simulate.generate_day(fraud, START)
    noisy = simulate.generate_day(fraud, START, label_noise=0.1)
    pd.testing.assert_frame_equal(clean.drop(columns="is_fraud"), noisy.drop(columns="is_fraud"))
    assert (clean["is_fraud"] != noisy["is_fraud"]).mean() == pytest.approx(0.1, abs=0.01)
    assert noisy.equals(simulate.generate_day(fraud, START, label_noise=0.1))

    clean = simulate.generate_day(delivery, START)
    noisy = simulate.generate_day(delivery, START, label_noise=0.2)
    changed = (clean["delivery_minutes"] != noisy["delivery_minutes"]).mean()
    assert 0.15 < changed <= 0.2
    assert noisy["delivery_minutes"].between(1, 400).all()


# ------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise(fraud):
    with pytest.raises(ValueError, match="simulation"):
        simulate.generate_day(fraud.model_copy(update={"simulation": None}), START)
    historical = fraud.model_copy(update={"source": SourceSpec(kind="historical", path="raw/all.parquet")})
    with pytest.raises(ValueError, match="historical"):
        simulate.land_days(historical, START, START)
    with pytest.raises(ValueError, match="drift kind"):
        simulate.generate_day(fraud, START, drift="sideways", drift_start=START)
    with pytest.raises(ValueError, match="drift_start"):
        simulate.generate_day(fraud, START, drift="covariate")
    with pytest.raises(ValueError, match="label_noise"):
        simulate.generate_day(fraud, START, label_noise=1.5)
    with pytest.raises(ValueError, match="before"):
        simulate.land_days(fraud, START, START - dt.timedelta(days=1))
    with pytest.raises(ValueError, match="drift kind"):
        simulate.land_days(fraud, START, START, drift="bogus", drift_start=START)


def test_the_shipped_fraud_spec_lands_a_chargeback_feed(storage_root):
    """Raw days without the target; per arrival day, the frauds whose chargeback came that day."""
    spec = get_spec("fraud")
    assert spec.labels.absent_label == 0
    end = START + dt.timedelta(days=4)
    uris = simulate.land_days(spec, START, end, seed=3)
    truth = pd.concat(simulate.generate_day(same_day_spec("fraud"), START + dt.timedelta(days=i), seed=3)
                      for i in range(5))
    raw_days = [u for u in uris if "/raw/fraud/" in u]
    assert len(raw_days) == 5 and "is_fraud" not in pd.read_parquet(local_path(raw_days[0])).columns
    feed = pd.concat(pd.read_parquet(local_path(u)).assign(arrived=local_path(u).parent.name[3:])
                     for u in uris if "/raw/fraud_chargebacks/" in u)
    frauds = truth.loc[truth["is_fraud"] == 1, "transaction_id"]
    assert set(feed["transaction_id"]) == set(frauds) and (feed["is_fraud"] == 1).all()  # no legitimate rows
    made = truth.set_index("transaction_id")["event_ts"].dt.date.astype("str")
    delay = (pd.to_datetime(feed["arrived"]) - pd.to_datetime(made.loc[feed["transaction_id"]].to_numpy())).dt.days
    assert delay.min() == 0 and set(delay) <= set(range(7))
    assert 0 < (delay > spec.labels.max_delay_days).mean() < 0.12  # a few chargebacks come too late
