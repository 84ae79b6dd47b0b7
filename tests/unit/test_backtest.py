"""The continuous-training backtest: policies on a data-time clock, shared fits, gates, the drift trigger
with hysteresis and a cooldown in data time, a scratch registry (production state untouched), and the CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from evergreen import backtest
from evergreen.cli import main as cli_main
from helpers import publish_days, small_spec

START = dt.date(2026, 3, 1)
HISTORY = 14  # days before the replay: the initial model's window
REPLAY = 10


@pytest.fixture
def changing_world(storage_root: Path):
    """delivery_eta with 14 days of one relationship, then 10 days where the signal is reversed."""
    spec = small_spec("delivery_eta", min_rows=500)
    publish_days(spec, START, HISTORY, rows=300, seed=1)
    publish_days(spec, START + dt.timedelta(days=HISTORY), REPLAY, rows=300, seed=2, signal=-1.0)
    return spec


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_policies_on_a_concept_change(changing_world, storage_root: Path, mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    spec = changing_world
    first = START + dt.timedelta(days=HISTORY)
    before = _files(storage_root)
    report = backtest.run_backtest(spec, first, first + dt.timedelta(days=REPLAY - 1),
                                   backtest.parse_policies("static,every:1,every:5,gated:1,triggered"),
                                   window_days=14)
    assert _files(storage_root) == before  # read-only on the storage root
    assert mlflow.search_experiments(filter_string="name != 'Default'") == []  # no registry writes
    assert report["metric"] == "rmse" and report["direction"] == "min" and report["days"] == REPLAY
    pol = report["policies"]
    assert {name: p["retrains"] for name, p in pol.items() if name != "triggered"} == {
        "static": 0, "every:1": REPLAY, "every:5": 2, "gated:1": REPLAY}
    assert pol["every:1"]["promotions"] == REPLAY and pol["every:5"]["promotions"] == 2
    # Fits are shared: the initial model plus one per replayed day, whatever the number of policies.
    assert report["fits"] == 1 + REPLAY
    # The world changed: the model that never retrains stays bad; retraining daily recovers as the window
    # fills with the new days (the last three days' error is far below the static model's).

    def last3(name: str) -> float:
        return sum(d["score"] for d in pol[name]["daily"][-3:]) / 3

    assert pol["every:1"]["score"] < pol["static"]["score"]
    assert last3("every:1") < 0.7 * last3("static")
    assert last3("gated:1") < 0.7 * last3("static")
    # Candidates below the spec's absolute bar still replace a champion they beat on the same rows.
    assert any(d["promoted"] and "below the bar" in d["reason"] for d in pol["gated:1"]["daily"])
    # Every day is scored by the model trained before it, and a new model serves from the next day.
    daily = pol["every:1"]["daily"]
    assert [d["model"] for d in daily] == [(first + dt.timedelta(days=i - 1)).isoformat() for i in range(REPLAY)]
    assert all(d["rows"] == 300 for d in daily)
    assert {d["model"] for d in pol["static"]["daily"]} == {(first - dt.timedelta(days=1)).isoformat()}
    # The reversed relationship is visible to the monitor of the static model, and each alarm says why.
    assert pol["static"]["alarms"] >= REPLAY // 2
    assert all(bool(d["drift_reasons"]) == d["alarm"] for d in pol["static"]["daily"])
    # Scores are row-weighted means of the daily metric.
    assert pol["static"]["score"] == pytest.approx(sum(d["score"] for d in pol["static"]["daily"]) / REPLAY)
    # The gated policy's rejections say why.
    for d in pol["gated:1"]["daily"]:
        assert d["retrained"] and d["reason"]

    paths = backtest.write_report(report, tmp_path / "out")
    assert json.loads(Path(paths["json"]).read_text())["policies"]["static"]["retrains"] == 0
    page = Path(paths["html"]).read_text()
    assert page.count("<polyline") == 5 and "every:5" in page and "<table>" in page


def test_triggered_cooldown_is_counted_in_data_time(changing_world, storage_root: Path) -> None:
    spec = changing_world.model_copy(update={"drift": changing_world.drift.model_copy(
        update={"cooldown_hours": 72.0, "consecutive_reports": 1})})
    first = START + dt.timedelta(days=HISTORY)
    report = backtest.run_backtest(spec, first, first + dt.timedelta(days=REPLAY - 1),
                                   backtest.parse_policies("triggered"), window_days=14)
    daily = report["policies"]["triggered"]["daily"]
    retrained = [dt.date.fromisoformat(d["ds"]) for d in daily if d["retrained"]]
    assert retrained, daily  # the change is caught
    # A wall-clock cooldown would allow one retrain (the replay takes seconds); in data time a retrain is
    # allowed again 3 days after the last one, and not before.
    assert all((b - a).days >= 3 for a, b in zip(retrained, retrained[1:], strict=False))
    blocked = [d for d in daily if d["alarm"] and not d["retrained"]]
    assert any("cooldown" in (d["reason"] or "") for d in blocked), blocked


def test_policy_names_and_errors(changing_world, storage_root: Path) -> None:
    assert [p.name for p in backtest.parse_policies("static, every:7 ,gated:2,triggered,performance")] == [
        "static", "every:7", "gated:2", "triggered", "performance"]
    for bad in ("every", "every:0", "gated:x", "sometimes", "static,static"):
        with pytest.raises(backtest.BacktestError):
            backtest.parse_policies(bad)
    with pytest.raises(backtest.BacktestError, match="cannot train the initial model"):
        backtest.run_backtest(changing_world, START, START + dt.timedelta(days=3), backtest.parse_policies("static"))
    with pytest.raises(backtest.BacktestError, match="no published"):
        backtest.run_backtest(changing_world, dt.date(2030, 1, 1), dt.date(2030, 1, 5),
                              backtest.parse_policies("static"))


def test_backtest_cli(changing_world, storage_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = START + dt.timedelta(days=HISTORY)
    out = tmp_path / "bt"
    code = cli_main(["backtest", "--spec", "delivery_eta", "--start", first.isoformat(),
                     "--end", (first + dt.timedelta(days=2)).isoformat(), "--policies", "static,every:1",
                     "--window-days", "14", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "backtest.json").read_text())
    assert set(report["policies"]) == {"static", "every:1"} and (out / "backtest.html").exists()
    assert "every:1" in capsys.readouterr().out
    assert cli_main(["backtest", "--spec", "delivery_eta", "--start", first.isoformat(), "--end",
                     first.isoformat(), "--policies", "weekly", "--out", str(out)]) == 2
    assert "unknown policy 'weekly'" in capsys.readouterr().err


def test_a_baseline_that_beats_xgboost_serves_in_the_replay(changing_world, storage_root: Path) -> None:
    """A crippled XGBoost (one stump) loses to the linear baseline: the baseline is the candidate that
    serves, in the replay as in the training DAG, and the replay says so day by day (days before the
    world changes, where the relationship is the linear one the baseline can fit)."""
    spec = changing_world.model_copy(update={"model": changing_world.model.model_copy(
        update={"num_boost_round": 1, "params": {"max_depth": 1, "eta": 0.01}})})
    first = START + dt.timedelta(days=10)
    report = backtest.run_backtest(spec, first, first + dt.timedelta(days=2), backtest.parse_policies("every:1,gated:1"),
                                   window_days=10)
    for name in ("every:1", "gated:1"):
        daily = report["policies"][name]["daily"]
        assert [d["candidate"] for d in daily] == ["baseline"] * 3
    every = report["policies"]["every:1"]
    assert every["baseline_promotions"] == every["promotions"] == 3
    # The daily score is the baseline's: a stump's near-constant predictions would be far worse.
    stump = backtest.run_backtest(spec.model_copy(update={"gates": spec.gates.model_copy(
        update={"baseline_candidate": False})}), first, first, backtest.parse_policies("static"), window_days=10)
    assert stump["policies"]["static"]["daily"][0]["candidate"] == "xgboost"
    assert report["policies"]["every:1"]["daily"][0]["score"] < 0.8 * stump["policies"]["static"]["daily"][0]["score"]


def test_the_performance_policy_retrains_on_realized_error(changing_world, storage_root: Path) -> None:
    """``performance``: the serving model's error over its last days (labels as known each day) against
    its holdout error, with hysteresis and a data-time cooldown: the reversed world is caught from the
    outcomes alone, and a retrain is not repeated within the cooldown."""
    spec = changing_world.model_copy(update={"drift": changing_world.drift.model_copy(
        update={"performance_window_days": 2, "cooldown_hours": 48.0, "consecutive_reports": 1})})
    first = START + dt.timedelta(days=HISTORY)
    report = backtest.run_backtest(spec, first, first + dt.timedelta(days=REPLAY - 1),
                                   backtest.parse_policies("static,performance"), window_days=14)
    daily = report["policies"]["performance"]["daily"]
    retrained = [d for d in daily if d["retrained"]]
    assert retrained and all(d["reason"].startswith("performance: realized rmse") for d in retrained)
    assert "worse than the holdout" in retrained[0]["reason"]
    days = [dt.date.fromisoformat(d["ds"]) for d in retrained]
    assert all((b - a).days >= 2 for a, b in zip(days, days[1:], strict=False))  # the cooldown, in data days
    assert any("cooldown" in (d["reason"] or "") for d in daily if not d["retrained"])
    # It recovers: the last days well below the static model's error, and the whole replay too.
    static = report["policies"]["static"]["daily"]
    assert sum(d["score"] for d in daily[-3:]) < 0.9 * sum(d["score"] for d in static[-3:])
    assert report["policies"]["performance"]["score"] < report["policies"]["static"]["score"]


def test_attribution_drift_counts_in_the_replay_as_in_the_monitor(changing_world, storage_root: Path) -> None:
    """With ``drift.attribution_drift_in_verdict`` the replay judges each day's SHAP shares against the
    serving model's holdout, as the monitor does; without it neither side is computed (the fits skip the
    holdout's SHAP pass) and no verdict can mention attributions."""
    first = START + dt.timedelta(days=HISTORY)

    def replay(in_verdict: bool) -> dict:
        drift = changing_world.drift.model_copy(update={"attribution_drift_in_verdict": in_verdict,
                                                        "attribution_shift_threshold": 0.0})
        spec = changing_world.model_copy(update={"drift": drift})
        return backtest.run_backtest(spec, first, first + dt.timedelta(days=2), backtest.parse_policies("static"),
                                     window_days=14)["policies"]["static"]["daily"]

    judged = replay(True)
    assert all(any(r.startswith("attribution shift") for r in d["drift_reasons"]) for d in judged), judged
    assert not any(r.startswith("attribution shift") for d in replay(False) for r in d["drift_reasons"])
