"""Evaluation against the champion, promotion with compare-and-set, rollback and the decision log."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from evergreen import settings, storage
from evergreen.evaluation import evaluate_challenger
from evergreen.registry import (
    RegistryError,
    champion_on,
    decision_history,
    promote_if_better,
    rollback,
)
from evergreen.spec import PipelineSpec
from evergreen.training.train import train_challenger
from evergreen.training.window import select_window
from helpers import START, configure_mlflow, publish_days, small_spec
from mlflow import MlflowClient

T0 = dt.datetime(2026, 10, 15, 3, 0, tzinfo=dt.UTC)


def relaxed(spec: PipelineSpec, registered_name: str) -> PipelineSpec:
    """Gates that only compare with the champion (1% tolerance), under a per-test registered name."""
    gates = spec.gates.model_copy(update={"absolute": {}, "min_lift_over_baseline": -1.0,
                                          "min_slice_metric": None, "max_slice_gap": None})
    model = spec.model.model_copy(update={"registered_name": registered_name})
    return spec.model_copy(update={"gates": gates, "model": model})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Three challenger runs on one window: two identical strong ones and a weak one (stumps, 2 rounds)."""
    base = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.STORAGE_ROOT, str(base / "storage"))
        spec = small_spec()
        configure_mlflow(mp, base, spec.name)
        days = publish_days(spec, START, 14)
        window = select_window(spec, days[-1])
        weak_spec = spec.model_copy(update={"model": spec.model.model_copy(
            update={"num_boost_round": 2, "params": {"max_depth": 1, "eta": 0.05}})})
        stump_spec = spec.model_copy(update={"model": spec.model.model_copy(
            update={"num_boost_round": 1, "params": {"max_depth": 1, "eta": 0.01}})})
        lineage = {"dag_id": "fraud_training", "reason": "scheduled"}
        yield {
            "spec": spec,
            "strong_a": train_challenger(spec, window, lineage=lineage)["run_id"],
            "strong_b": train_challenger(spec, window, lineage=lineage)["run_id"],
            "weak": train_challenger(weak_spec, window, lineage=lineage)["run_id"],
            "stump": train_challenger(stump_spec, window, lineage=lineage)["run_id"],
        }


@pytest.fixture
def env(runs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> dict[str, Any]:
    """Fresh decision storage and a registered model name of this test's own."""
    monkeypatch.setenv(settings.STORAGE_ROOT, str(tmp_path / "storage"))
    monkeypatch.setenv(settings.CAS_SETTLE_SECONDS, "0.05")
    name = "fraud_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    return {**runs, "spec": relaxed(runs["spec"], name), "name": name, "client": MlflowClient()}


def alias(client: MlflowClient, name: str, which: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, which).version)
    except mlflow.exceptions.MlflowException:
        return None


def model_uri(client: MlflowClient, run_id: str) -> str:
    return client.get_run(run_id).data.tags["evergreen.model_uri"]


def evaluate_and_promote(env: dict[str, Any], run: str, at: dt.datetime, **kwargs: Any) -> dict[str, Any]:
    report = evaluate_challenger(env["spec"], env[run])
    return promote_if_better(env["spec"], env[run], report, dry_run=False, actor="test", decided_at=at, **kwargs)


def test_first_candidate_becomes_champion(env: dict[str, Any]) -> None:
    spec, client, name = env["spec"], env["client"], env["name"]
    report = evaluate_challenger(spec, env["strong_a"])
    assert report["champion_version"] is None and report["passed"] is True
    assert (storage.storage_root() / "models" / spec.name / "decisions" / env["strong_a"] / "gates.json").exists()
    decision = promote_if_better(spec, env["strong_a"], report, dry_run=False, actor="test", decided_at=T0)
    assert decision["kind"] == "promoted"
    assert alias(client, name, "champion") == decision["version"] == "1"
    assert alias(client, name, "challenger") is None  # removed once it became champion
    assert alias(client, name, "previous_champion") is None
    tags = client.get_model_version(name, "1").tags
    assert tags["evergreen.decision"] == "promoted"
    assert tags["evergreen.decided_at"] == T0.isoformat()
    assert tags["evergreen.run_id"] == env["strong_a"]
    assert tags["evergreen.dag_id"] == "fraud_training"  # lineage copied from the run
    assert [d["kind"] for d in decision_history(spec)] == ["promoted"]


def test_worse_candidate_rejected_champion_unchanged(env: dict[str, Any]) -> None:
    spec, client, name = env["spec"], env["client"], env["name"]
    evaluate_and_promote(env, "strong_a", T0)
    report = evaluate_challenger(spec, env["weak"])
    assert report["champion_version"] == "1"
    assert report["passed"] is False and "no_regression_vs_champion" in report["failed"]
    decision = promote_if_better(spec, env["weak"], report, dry_run=False, actor="test",
                                 decided_at=T0 + dt.timedelta(days=1))
    assert decision["kind"] == "rejected" and decision["version"] is None
    assert "no_regression_vs_champion" in decision["reasons"][0]
    assert alias(client, name, "champion") == "1"
    assert len(client.search_model_versions(f"name = '{name}'")) == 1  # nothing registered
    run_tags = client.get_run(env["weak"]).data.tags
    assert run_tags["evergreen.decision"] == "rejected"
    assert "no_regression_vs_champion" in run_tags["evergreen.rejection_reasons"]


def test_better_candidate_promoted_previous_champion_set(env: dict[str, Any]) -> None:
    client, name = env["client"], env["name"]
    assert evaluate_and_promote(env, "weak", T0)["kind"] == "promoted"
    decision = evaluate_and_promote(env, "strong_a", T0 + dt.timedelta(days=1))
    assert decision["kind"] == "promoted"
    assert decision["champion_before"] == "1" and decision["champion_after"] == "2"
    assert alias(client, name, "champion") == "2"
    assert alias(client, name, "previous_champion") == "1"


def test_equal_candidate_registered_not_promoted(env: dict[str, Any]) -> None:
    client, name = env["client"], env["name"]
    evaluate_and_promote(env, "strong_a", T0)
    decision = evaluate_and_promote(env, "strong_b", T0 + dt.timedelta(days=1))
    assert decision["kind"] == "registered"
    assert alias(client, name, "champion") == "1"
    assert alias(client, name, "challenger") == decision["version"] == "2"
    assert client.get_model_version(name, "2").tags["evergreen.decision"] == "registered"


def test_retried_promotion_is_idempotent(env: dict[str, Any]) -> None:
    spec, client, name = env["spec"], env["client"], env["name"]
    report = evaluate_challenger(spec, env["strong_a"])
    first = promote_if_better(spec, env["strong_a"], report, dry_run=False, actor="test", decided_at=T0)
    again = promote_if_better(spec, env["strong_a"], report, dry_run=False, actor="test", decided_at=T0)
    assert first["kind"] == again["kind"] == "promoted"
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert len(decision_history(spec)) == 1  # same decided_at: the file is rewritten, not duplicated


def test_rollback_restores_previous_champion(env: dict[str, Any]) -> None:
    spec, client, name = env["spec"], env["client"], env["name"]
    with pytest.raises(RegistryError, match="no champion"):
        rollback(spec, actor="oncall", reason="nothing yet", decided_at=T0)
    evaluate_and_promote(env, "weak", T0)
    with pytest.raises(RegistryError, match="previous_champion"):
        rollback(spec, actor="oncall", reason="nothing to go back to", decided_at=T0)
    evaluate_and_promote(env, "strong_a", T0 + dt.timedelta(days=1))
    decision = rollback(spec, target_version=None, actor="oncall", reason="bad live metrics",
                        decided_at=T0 + dt.timedelta(days=2))
    assert decision["kind"] == "rolled_back"
    assert alias(client, name, "champion") == "1"
    assert alias(client, name, "previous_champion") == "2"
    assert {str(v.version) for v in client.search_model_versions(f"name = '{name}'")} == {"1", "2"}
    assert client.get_model_version(name, "1").tags["evergreen.decision"] == "rolled_back"
    assert [d["kind"] for d in decision_history(spec)] == ["promoted", "promoted", "rolled_back"]


def test_dry_run_changes_nothing(env: dict[str, Any]) -> None:
    spec, client, name = env["spec"], env["client"], env["name"]
    report = evaluate_challenger(spec, env["strong_b"])
    tags_before = client.get_run(env["strong_b"]).data.tags
    decision = promote_if_better(spec, env["strong_b"], report, dry_run=True, actor="test", decided_at=T0)
    assert decision["kind"] == "dry_run" and decision["outcome"] == "would_promote"
    assert client.search_registered_models(f"name = '{name}'") == []
    assert client.get_run(env["strong_b"]).data.tags == tags_before
    assert [d["kind"] for d in decision_history(spec)] == ["dry_run"]
    assert champion_on(spec, T0 + dt.timedelta(days=1)) is None


def test_stale_evaluation_is_not_promoted(env: dict[str, Any]) -> None:
    spec, client, name = env["spec"], env["client"], env["name"]
    evaluate_and_promote(env, "weak", T0)
    report = evaluate_challenger(spec, env["strong_a"])  # evaluated against version 1
    mlflow.register_model(model_uri(client, env["strong_b"]), name)  # someone else's version 2 ...
    client.set_registered_model_alias(name, "champion", "2")  # ... became champion meanwhile
    decision = promote_if_better(spec, env["strong_a"], report, dry_run=False, actor="test",
                                 decided_at=T0 + dt.timedelta(days=1))
    assert decision["kind"] == "registered"
    assert "champion changed concurrently" in decision["reasons"][0]
    assert alias(client, name, "champion") == "2"


def _race(*calls: Any) -> list[Any]:
    """Run the calls in threads at once; their results in order (a thread's exception is re-raised)."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors
    return results


def test_concurrent_promoters_exactly_one_wins(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    spec, client, name = env["spec"], env["client"], env["name"]
    evaluate_and_promote(env, "weak", T0)
    reports = {run: evaluate_challenger(spec, env[run]) for run in ("strong_a", "strong_b")}
    assert all(r["champion_version"] == "1" and r["beats_champion"] for r in reports.values())
    # Versions exist before the race so the threads only contend on the alias.
    for run in ("strong_a", "strong_b"):
        mlflow.register_model(model_uri(client, env[run]), name)

    # The probe of issue 11: the first writer stalls 3 s between its read and its write (longer than the
    # settle wait). Without a lock both reported a win; under the registry lock the second one waits.
    original = MlflowClient.set_registered_model_alias
    stalled: list[str] = []

    def slow_first_set(self: MlflowClient, model: str, which: str, version: str) -> None:
        if which == "champion" and not stalled:
            stalled.append(version)
            time.sleep(3.0)
        original(self, model, which, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", slow_first_set)
    results = _race(*(lambda run=run: promote_if_better(spec, env[run], reports[run], dry_run=False, actor=run,
                                                         decided_at=T0 + dt.timedelta(days=1), settle_seconds=0.5)
                      for run in ("strong_a", "strong_b")))
    assert sorted(r["kind"] for r in results) == ["promoted", "registered"]
    winner = next(r for r in results if r["kind"] == "promoted")
    loser = next(r for r in results if r["kind"] == "registered")
    assert winner["version"] == stalled[0]  # the stalled writer held the lock: it is the one that won
    assert alias(client, name, "champion") == winner["version"]
    assert alias(client, name, "previous_champion") == "1"
    assert winner["previous_champion"] == "1" and winner["champion_before"] == "1"
    assert "champion changed concurrently" in loser["reasons"][0]
    assert loser["champion_after"] == winner["version"]
    promoted = [d for d in decision_history(spec) if d["kind"] == "promoted"]
    assert [d["version"] for d in promoted] == ["1", winner["version"]]  # one record per version
    assert not storage.at(f"models/{spec.name}/registry.lock").exists()  # released


def test_a_doubled_promotion_records_once(env: dict[str, Any]) -> None:
    spec, client, name = env["spec"], env["client"], env["name"]
    evaluate_and_promote(env, "weak", T0)
    report = evaluate_challenger(spec, env["strong_a"])
    first, second = _race(*(lambda: promote_if_better(spec, env["strong_a"], report, dry_run=False, actor="twice",
                                                       decided_at=T0 + dt.timedelta(days=1))
                            for _ in range(2)))
    assert first == second and first["kind"] == "promoted" and first["version"] == "2"
    assert first["champion_before"] == "1"  # never "2 -> 2"
    assert alias(client, name, "previous_champion") == "1"
    assert [d["version"] for d in decision_history(spec) if d["kind"] == "promoted"] == ["1", "2"]


def test_a_promotion_and_a_rollback_serialise(env: dict[str, Any]) -> None:
    spec, client, name = env["spec"], env["client"], env["name"]
    evaluate_and_promote(env, "weak", T0)  # v1
    evaluate_and_promote(env, "strong_a", T0 + dt.timedelta(hours=1))  # v2 beats it
    rollback(spec, actor="oncall", reason="back to v1", decided_at=T0 + dt.timedelta(hours=2))  # v1, prev v2
    report = evaluate_challenger(spec, env["strong_b"])  # against v1: it beats it
    assert report["champion_version"] == "1" and report["beats_champion"]
    promotion, rolled = _race(
        lambda: promote_if_better(spec, env["strong_b"], report, dry_run=False, actor="dag",
                                  decided_at=T0 + dt.timedelta(hours=3)),
        lambda: rollback(spec, actor="cli", reason="again", decided_at=T0 + dt.timedelta(hours=3)),
    )
    # Either order is fine; interleaved, the aliases would disagree with the decision log.
    if promotion["kind"] == "promoted":  # promotion first (v3), then the rollback from it to v1
        assert rolled["champion_before"] == promotion["version"] and rolled["champion_after"] == "1"
        assert (alias(client, name, "champion"), alias(client, name, "previous_champion")) == ("1", promotion["version"])
    else:  # rollback first (v1 -> v2): the promotion sees the champion moved and only registers
        assert promotion["kind"] == "registered" and "champion changed concurrently" in promotion["reasons"][0]
        assert (rolled["champion_before"], rolled["champion_after"]) == ("1", "2")
        assert (alias(client, name, "champion"), alias(client, name, "previous_champion")) == ("2", "1")


def test_a_held_lock_blocks_then_expires(env: dict[str, Any]) -> None:
    from evergreen.registry import registry_lock

    spec = env["spec"]
    with registry_lock(spec, "holder"), pytest.raises(RegistryError, match="stayed locked by holder"):
        with registry_lock(spec, "waiter", wait_seconds=0.5):
            pass
    # A holder that died: its lock expires and is taken over.
    lock = storage.at(f"models/{spec.name}/registry.lock")
    storage.write_json_atomic(lock, {"owner": "dead", "token": "x", "acquired_at": "2026-01-01T00:00:00+00:00",
                                     "expires_at": "2026-01-01T00:10:00+00:00"})
    with registry_lock(spec, "next", wait_seconds=5):
        assert storage.read_json(lock)["owner"] == "next"
    assert not lock.exists()


def test_champion_on_answers_by_date(env: dict[str, Any]) -> None:
    spec = env["spec"]
    evaluate_and_promote(env, "weak", T0)
    evaluate_and_promote(env, "strong_b", T0 + dt.timedelta(days=1, hours=2))  # weak loses -> v2
    evaluate_and_promote(env, "strong_a", T0 + dt.timedelta(days=2))  # equal to v2: registered only
    rollback(spec, actor="oncall", reason="latency regression", decided_at=T0 + dt.timedelta(days=3))

    assert champion_on(spec, T0 - dt.timedelta(seconds=1)) is None
    at_t0 = champion_on(spec, T0)
    assert at_t0 is not None and at_t0["version"] == "1" and at_t0["kind"] == "promoted"
    day2 = champion_on(spec, T0 + dt.timedelta(days=2, hours=12))
    assert day2 is not None and day2["version"] == "2" and day2["since"] == (T0 + dt.timedelta(days=1, hours=2)).isoformat()
    later = champion_on(spec, dt.datetime(2027, 1, 1))  # naive = UTC
    assert later is not None and later["version"] == "1" and later["kind"] == "rolled_back"
    assert later["reasons"] == ["latency regression"] and later["actor"] == "oncall"
    kinds = [d["kind"] for d in decision_history(spec)]
    assert kinds == ["promoted", "promoted", "registered", "rolled_back"]


def test_a_better_candidate_below_the_bar_still_replaces_the_champion(env: dict[str, Any]) -> None:
    """The probe of issue 13: every candidate failed an absolute bar, so a worse champion stayed forever."""
    client, name = env["client"], env["name"]
    assert evaluate_and_promote(env, "weak", T0)["kind"] == "promoted"
    strict = env["spec"].model_copy(update={"gates": env["spec"].gates.model_copy(
        update={"absolute": {"roc_auc": 0.999}})})
    report = evaluate_challenger(strict, env["strong_a"])
    assert report["failed"] == ["absolute:roc_auc"] and report["beats_champion"] is True
    decision = promote_if_better(strict, env["strong_a"], report, dry_run=False, actor="test",
                                 decided_at=T0 + dt.timedelta(days=1))
    assert decision["kind"] == "promoted" and decision["below_bar"] is True
    assert "below the bar (absolute:roc_auc)" in decision["reasons"][0]
    assert alias(client, name, "champion") == decision["version"] == "2"
    assert client.get_model_version(name, "2").tags["evergreen.gates_passed"] == "false"
    # Unless the spec says the bar blocks: then the better candidate is rejected like any failure.
    blocking = strict.model_copy(update={"gates": strict.gates.model_copy(update={"bar_blocks": True})})
    report = evaluate_challenger(blocking, env["strong_b"])
    decision = promote_if_better(blocking, env["strong_b"], report, dry_run=False, actor="test",
                                 decided_at=T0 + dt.timedelta(days=2))
    assert decision["kind"] == "rejected" and alias(client, name, "champion") == "2"


def test_a_baseline_that_beats_xgboost_is_the_candidate_and_serves(env: dict[str, Any]) -> None:
    """Issue 13: "XGBoost lost to the baseline" must not mean "keep a stale champion": the baseline is a
    registered model, judged by the gates and promoted like any candidate."""
    import numpy as np
    from evergreen.monitoring import load_champion_reference
    from evergreen.registry import load_version
    from evergreen.tracking import download_holdout

    spec, client, name = env["spec"], env["client"], env["name"]
    report = evaluate_challenger(spec, env["stump"])
    assert report["candidate"] == "baseline"
    baseline_run_id = client.get_run(env["stump"]).data.tags["evergreen.baseline_run_id"]
    assert report["candidate_run_id"] == baseline_run_id
    xgb_auc, base_auc = report["xgboost_metrics"]["roc_auc"], report["challenger_metrics"]["roc_auc"]
    assert base_auc > xgb_auc + 0.05  # one stump against a logistic regression
    assert base_auc == pytest.approx(client.get_run(baseline_run_id).data.metrics["roc_auc"], abs=1e-12)
    lift = next(g for g in report["gates"] if g["name"] == "lift_over_baseline")
    assert lift["status"] == "skipped" and report["passed"] is True

    decision = promote_if_better(spec, env["stump"], report, dry_run=False, actor="test", decided_at=T0)
    assert decision["kind"] == "promoted" and decision["candidate"] == "baseline"
    version = client.get_model_version(name, decision["version"])
    assert version.run_id == baseline_run_id
    assert version.tags["evergreen.candidate"] == "baseline" and version.tags["evergreen.run_id"] == baseline_run_id
    # It serves: loaded through its verified hashes, it scores the holdout as it was judged.
    holdout = download_holdout(env["stump"])
    scores = np.asarray(load_version(spec, decision["version"]).predict(holdout[list(spec.model_features)]))
    assert 0.0 < scores.min() < scores.max() < 1.0 and len(np.unique(scores)) > 50
    # And the drift monitor finds its own reference (its holdout scores, not XGBoost's).
    reference = load_champion_reference(spec)
    assert reference.version == decision["version"]
    assert reference.metrics["roc_auc"] == pytest.approx(base_auc, abs=1e-12)
    assert reference.profile["holdout_daily"]["metric"] == spec.primary_metric

    # A strong XGBoost beats the baseline champion on its holdout and replaces it.
    assert evaluate_and_promote(env, "strong_a", T0 + dt.timedelta(days=1))["kind"] == "promoted"
    assert alias(client, name, "previous_champion") == decision["version"]


def test_without_baseline_candidates_xgboost_must_beat_the_baseline(env: dict[str, Any]) -> None:
    spec = env["spec"]
    spec = spec.model_copy(update={"gates": spec.gates.model_copy(
        update={"baseline_candidate": False, "min_lift_over_baseline": 0.0})})
    report = evaluate_challenger(spec, env["stump"])
    assert report["candidate"] == "xgboost" and report["candidate_run_id"] == env["stump"]
    assert report["failed"] == ["lift_over_baseline"]
    decision = promote_if_better(spec, env["stump"], report, dry_run=False, actor="test", decided_at=T0)
    assert decision["kind"] == "rejected" and alias(env["client"], env["name"], "champion") is None
