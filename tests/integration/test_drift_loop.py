"""The continuous-training loop through a real Airflow scheduler (LocalExecutor): champion, drift
injected, reports, exactly one drift-triggered retrain with the expected run id and conf, dedup of a
report seen twice, and the cooldown. Slow: ``pytest -m scheduler``."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from evergreen import monitoring
from evergreen.spec import get_spec
from helpers import REPO, http_call, land_and_etl, open_evergreen, running_stack, signed_in_browser

from devtools import demo
from devtools.localstack import LocalStack

pytestmark = pytest.mark.scheduler

FRAUD = get_spec("fraud")
START, AS_OF = dt.date(2026, 10, 1), dt.date(2026, 10, 21)
DRIFT_START = AS_OF + dt.timedelta(days=1)


USERS = {"viewer": "viewer-password-1", "outsider": "outsider-password-1"}  # both of SimpleAuthManager's viewer role
ARTIFACTS = REPO / ".evergreen" / "test-artifacts"  # screenshots of the browser test (gitignored)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    home = tmp_path_factory.mktemp("loop")
    # Users for the Evergreen page's permission tests: ``outsider`` may see no DAG of fraud (an auth manager
    # with per-DAG rules, tests/support/scoped_auth_manager.py); ``viewer`` may read but not trigger.
    (home / "airflow").mkdir()
    (home / "airflow" / "simple_auth_manager_passwords.json").write_text(json.dumps(USERS))
    extra_env = {
        "AIRFLOW__CORE__AUTH_MANAGER": "scoped_auth_manager.ScopedAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer,outsider:viewer",
        "PYTHONPATH": os.pathsep.join([str(REPO / "config"), str(REPO / "tests" / "support")]),
    }
    with running_stack(home, [demo.ETL_DAG, demo.TRAINING_DAG, demo.MONITOR_DAG, demo.SENSOR_DAG, demo.OUTCOMES_DAG,
                              demo.ROLLBACK_DAG], unpause=True, extra_env=extra_env) as local:
        yield local


def _training_runs(stack: LocalStack) -> dict[str, dict]:
    return {r["dag_run_id"]: r for r in stack.dag_runs(demo.TRAINING_DAG)}


def test_drift_triggers_exactly_one_retrain_then_cooldown(stack: LocalStack) -> None:
    storage = Path(os.environ["EVERGREEN_STORAGE_ROOT"])
    # Three weeks of normal history and its chargebacks (in-process: the scheduler's backfill has its own test).
    land_and_etl(FRAUD, START, AS_OF, seed=demo.SEED)

    champion = demo.run_and_wait(stack, demo.TRAINING_DAG, {"as_of": AS_OF.isoformat(), "window_days": 21})
    assert champion["state"] == "success"
    assert stack.xcom(demo.TRAINING_DAG, champion["dag_run_id"], "promote_if_better")["kind"] == "promoted"

    # No drift in the history: reports for all 21 days, no retrain.
    summary = demo.monitor_drift(stack)
    assert len(summary["reports"]) == 21 and summary["drifted"] == []
    decided, training = demo.sense_drift(stack)
    assert decided["trigger"] is None and training is None
    assert {d["decision"] for d in decided["decisions"]} == {"no_drift"}
    before = set(_training_runs(stack))

    # Covariate drift: both new days are flagged, the sensor starts exactly one training run.
    demo.play_days(stack, storage, DRIFT_START, DRIFT_START + dt.timedelta(days=1), drift="covariate",
                   drift_start=DRIFT_START)
    summary = demo.monitor_drift(stack)
    assert summary["drifted"] == [DRIFT_START.isoformat(), (DRIFT_START + dt.timedelta(days=1)).isoformat()]
    demo.take_outcomes(stack, DRIFT_START + dt.timedelta(days=1))  # as the demo: the chargebacks so far are in
    latest = [r for r in monitoring.all_reports(FRAUD) if r["ds"] == summary["drifted"][-1]][0]
    decided, training = demo.sense_drift(stack)
    expected_run_id = monitoring.trigger_run_id(latest)
    assert decided["trigger"]["run_id"] == expected_run_id
    new_runs = {k: v for k, v in _training_runs(stack).items() if k not in before}
    assert list(new_runs) == [expected_run_id]
    run = new_runs[expected_run_id]
    assert run["conf"] == {"as_of": latest["ds"], "reason": "drift", "drift_report": latest["key"]}
    assert training is not None and training["state"] == "success"
    gates = stack.xcom(demo.TRAINING_DAG, expected_run_id, "evaluate_gates")
    assert gates["gates"] and "passed" in gates
    decision = stack.xcom(demo.TRAINING_DAG, expected_run_id, "promote_if_better")
    assert decision["kind"] in {"promoted", "registered", "rejected"}
    assert decision["champion_evaluated_against"] == "1"

    # The same report seen again (its ledger entry lost): the deterministic run id dedups the trigger.
    ledger = storage / "models" / "fraud" / "drift_triggers" / f"{latest['ds']}-{latest['sha256'][:12]}.json"
    assert json.loads(ledger.read_text())["decision"] == "triggered"
    ledger.unlink()
    decided, _ = demo.sense_drift(stack)
    assert decided["trigger"]["run_id"] == expected_run_id
    sensor_run = stack.dag_runs(demo.SENSOR_DAG)[-1]
    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(demo.SENSOR_DAG, sensor_run["dag_run_id"])}
    assert states["trigger_retrain"] == "skipped"
    assert [k for k in _training_runs(stack) if k not in before] == [expected_run_id]

    # One more drifted day inside the cooldown: recorded, not triggered.
    next_day = DRIFT_START + dt.timedelta(days=2)
    demo.play_days(stack, storage, next_day, next_day, drift="covariate", drift_start=DRIFT_START)
    assert demo.monitor_drift(stack)["drifted"] == [next_day.isoformat()]
    decided, training = demo.sense_drift(stack)
    assert training is None
    assert [d["decision"] for d in decided["decisions"]] == ["cooldown"]
    assert [k for k in _training_runs(stack) if k not in before] == [expected_run_id]
    kinds = [e["decision"] for e in monitoring.trigger_ledger(FRAUD) if e["drift_detected"]]
    assert kinds.count("triggered") == 1 and "cooldown" in kinds


def test_a_late_label_day_as_the_demo_plays_it(stack: LocalStack) -> None:
    """After the loop above: a played day is predicted first, waits for its chargebacks, then its outcome
    and realized performance appear once its 3-day window has closed (outcomes runs on the data clock)."""
    storage = Path(os.environ["EVERGREEN_STORAGE_ROOT"])

    def outcome(ds: dt.date) -> dict:
        return json.loads((storage / "outcomes" / "fraud" / f"ds={ds}" / "_manifest.json").read_text())

    joined = demo.take_outcomes(stack, DRIFT_START + dt.timedelta(days=1))
    assert joined["as_of"] == (DRIFT_START + dt.timedelta(days=1)).isoformat()
    waiting = outcome(DRIFT_START)
    assert waiting["labelled_rows"] == 0 and waiting["models"]["champion"]["rows"] > 0  # predicted, no label yet
    settled = outcome(AS_OF - dt.timedelta(days=2))  # its window closed: every row labelled, frauds or not
    assert settled["labelled_rows"] == settled["models"]["champion"]["rows"] > 0
    assert 0.5 < settled["models"]["champion"]["metrics"]["roc_auc"] <= 1.0

    closing = demo.take_outcomes(stack, DRIFT_START + dt.timedelta(days=3))
    matured = outcome(DRIFT_START)
    assert matured["labelled_rows"] == matured["models"]["champion"]["rows"]
    assert matured["labels_as_of"] == closing["as_of"] and matured["models"]["champion"]["metrics"]["roc_auc"] > 0.5
    report = json.loads((storage / closing["report"]).read_text())
    assert DRIFT_START.isoformat() in {day["ds"] for day in report["days"]}
    assert (storage / "reports" / "performance" / "fraud" / "report.html").is_file()


# ------------------------------------------------------------------------------- the Evergreen page


def _token(stack: LocalStack, user: str) -> str:
    status, body = http_call("POST", f"{stack.airflow_url}/auth/token",
                             body={"username": user, "password": USERS.get(user, stack.password)})
    assert status in (200, 201), body
    return json.loads(body)["access_token"]


def _call(stack: LocalStack, method: str, path: str, token: str | None = None, **kwargs) -> tuple[int, bytes]:
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **kwargs.pop("headers", {})}
    return http_call(method, f"{stack.airflow_url}{path}", headers=headers, **kwargs)


ROLLBACK = {"headers": {"X-Evergreen-Action": "rollback"}, "body": {"reason": "permission test"}}


def test_every_page_and_action_needs_an_airflow_user_with_permission(stack: LocalStack) -> None:
    from evergreen import registry

    ds = monitoring.all_reports(FRAUD)[-1]["ds"]
    champion = registry.alias_version(registry._client(), "fraud", "champion")
    reads = ["/evergreen/", "/evergreen/specs/fraud", "/evergreen/api/specs/fraud", "/evergreen/metrics",
             f"/evergreen/specs/fraud/reports/drift/{ds}", "/evergreen/specs/fraud/reports/performance",
             f"/evergreen/specs/fraud/versions/{champion}/card"]
    for path in reads:  # Airflow does not authenticate plugin apps: the page does
        assert _call(stack, "GET", path)[0] == 401, path
    assert _call(stack, "POST", "/evergreen/specs/fraud/rollback", **ROLLBACK)[0] == 401
    assert _call(stack, "GET", "/evergreen/specs/fraud", "not-a-token")[0] == 403  # Airflow's answer to a bad JWT

    outsider = _token(stack, "outsider")  # no permission on fraud's DAGs
    for path in reads[1:3] + reads[4:]:
        assert _call(stack, "GET", path, outsider)[0] == 403, path
    assert _call(stack, "POST", "/evergreen/specs/fraud/rollback", outsider, **ROLLBACK)[0] == 403
    status, index = _call(stack, "GET", "/evergreen/", outsider)
    assert status == 200 and b"/evergreen/specs/delivery_eta" in index and b"/evergreen/specs/fraud" not in index
    status, metrics = _call(stack, "GET", "/evergreen/metrics", outsider)
    assert status == 200 and b'spec="fraud"' not in metrics and b'spec="delivery_eta"' in metrics

    viewer = _token(stack, "viewer")  # reads, may not trigger
    status, page = _call(stack, "GET", "/evergreen/specs/fraud", viewer)
    assert status == 200 and b"may not trigger a rollback" in page
    assert _call(stack, "POST", "/evergreen/specs/fraud/rollback", viewer, **ROLLBACK)[0] == 403
    admin = _token(stack, "admin")
    status, body = _call(stack, "POST", "/evergreen/specs/fraud/rollback", admin, body={"reason": "no header"})
    assert status == 400 and b"X-Evergreen-Action" in body  # a cross-site form cannot set it
    assert stack.dag_runs(demo.ROLLBACK_DAG) == []  # nothing was triggered by any of these


def test_the_page_matches_storage_and_the_registry(stack: LocalStack) -> None:
    from evergreen import outcomes, registry

    admin = _token(stack, "admin")
    status, body = _call(stack, "GET", "/evergreen/api/specs/fraud", admin)
    assert status == 200
    health = json.loads(body)
    client = registry._client()
    assert health["aliases"]["champion"]["version"] == registry.alias_version(client, "fraud", "champion")
    reports = monitoring.all_reports(FRAUD)
    assert [d["ds"] for d in health["drift"]] == [r["ds"] for r in reports]
    assert [d["ds"] for d in health["drift"] if d["drift_detected"]] == [r["ds"] for r in reports if r["drift_detected"]]
    assert [d["ds"] for d in health["performance"]] == [d["ds"] for d in outcomes.performance_days(FRAUD)]
    assert [e["ds"] for e in health["ledger"]][-1] == monitoring.trigger_ledger(FRAUD)[-1]["ds"]
    assert health["decisions"][-1]["decision_file"] == registry.decision_history(FRAUD)[-1]["decision_file"]
    assert health["retrains_triggered"] == 1

    champion = health["aliases"]["champion"]["version"]
    status, page = _call(stack, "GET", "/evergreen/specs/fraud", admin)
    assert status == 200 and f"/evergreen/specs/fraud/versions/{champion}/card".encode() in page
    status, card = _call(stack, "GET", f"/evergreen/specs/fraud/versions/{champion}/card", admin)
    assert status == 200 and f"Model card: fraud version {champion}".encode() in card
    assert b"<h2>What drives it</h2>" in card and b"<h2>Known limitations</h2>" in card
    assert _call(stack, "GET", "/evergreen/specs/fraud/versions/999/card", admin)[0] == 404

    status, text = _call(stack, "GET", "/evergreen/metrics", admin)
    lines = dict(line.rsplit(" ", 1) for line in text.decode().splitlines() if line and not line.startswith("#"))
    assert float(lines['evergreen_champion_version{spec="fraud"}']) == float(health["aliases"]["champion"]["version"])
    assert float(lines['evergreen_retrains_triggered{spec="fraud"}']) == 1.0
    assert 0 <= float(lines['evergreen_days_since_promotion{spec="fraud"}']) < 1  # promoted minutes ago
    latest = health["drift"][-1]
    assert float(lines['evergreen_drift_share{spec="fraud"}']) == pytest.approx(latest["drifted_share"])
    assert float(lines['evergreen_key_feature_psi{feature="amount",spec="fraud"}']) == pytest.approx(latest["key_psi"]["amount"])
    champion = health["aliases"]["champion"]["version"]
    realized = outcomes.realized_metric(FRAUD, champion, FRAUD.drift.performance_window_days)
    key = 'evergreen_champion_realized_metric{metric="roc_auc",spec="fraud"}'
    if realized is None:  # a champion newer than every matured outcome day has no realized metric yet
        assert key not in lines and [d for d in health["performance"] if champion in
                                     {m["version"] for m in d["models"].values() if m["labelled"]}] == []
    else:
        assert float(lines[key]) == pytest.approx(realized["value"])


def test_the_page_in_a_real_browser_rolls_the_champion_back(stack: LocalStack) -> None:
    """Chromium (Debian's, driven by Playwright): log in, open Evergreen from Airflow's navigation, compare
    the champion and the drift chart with storage, roll back, and see the champion change."""
    from evergreen import registry

    client = registry._client()
    before = registry.alias_version(client, "fraud", "champion")
    others = sorted((str(v.version) for v in client.search_model_versions("name='fraud'") if str(v.version) != before),
                    key=int)
    target = registry.alias_version(client, "fraud", "previous_champion") or (others[-1] if others else None)
    assert target is not None and target != before, "the drift retrain above registered no second version"
    reports = monitoring.all_reports(FRAUD)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with signed_in_browser(stack.airflow_url, "admin", stack.password) as page:
        frame = open_evergreen(page, stack.airflow_url, "fraud")
        champion_cell = frame.locator("#aliases tr[data-alias=champion] .version")
        assert champion_cell.inner_text() == f"v{before}"
        assert frame.locator("#drift tr[data-ds]").count() == len(reports)
        assert frame.locator("#drift-chart svg polyline").count() >= 1 + len(FRAUD.drift.key_features)
        flagged = [r["ds"] for r in reports if r["drift_detected"]]
        assert [frame.locator(f"#drift tr[data-ds='{ds}'] td").nth(1).inner_text() for ds in flagged] == ["drift"] * len(flagged)
        page.screenshot(path=str(ARTIFACTS / "evergreen-page.png"), full_page=True)

        frame.locator("#rollback-target").fill(target)
        frame.locator("#rollback-reason").fill("browser test")
        frame.locator("#rollback").click()
        frame.locator("#rollback-result").filter(has_text="rollback requested").wait_for(timeout=30_000)
        run_id = frame.locator("#rollback-result").inner_text().split("DAG run ")[1].split(" of ")[0]
        (finished,) = stack.wait_for_runs(demo.ROLLBACK_DAG, run_ids=[run_id], timeout=180)
        assert finished["state"] == "success"
        page.reload()  # the UI keeps the page's own path in its URL: the reload shows the spec's page again
        page.wait_for_load_state("networkidle")
        frame = page.frame_locator("iframe")
        frame.locator("#aliases tr[data-alias=champion] .version").filter(has_text=f"v{target}").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "evergreen-page-after-rollback.png"), full_page=True)
    assert registry.alias_version(client, "fraud", "champion") == target
    assert registry.decision_history(FRAUD)[-1]["kind"] == "rolled_back"
    run = stack.dag_run(demo.ROLLBACK_DAG, run_id)
    assert run["conf"] == {"target_version": target, "reason": "browser test"} and run["triggering_user_name"] == "admin"
