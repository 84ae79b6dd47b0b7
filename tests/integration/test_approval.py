"""``promotion.mode: approval`` under a real scheduler: the training run waits in Airflow's
human-in-the-loop state with the gate report as its body; an answer on the Evergreen page (in a real
browser, through Airflow's REST API as the UI sends it) promotes, naming the approver in the decision log; no answer in time is a rejection. Slow:
``pytest -m scheduler``."""

from __future__ import annotations

import datetime as dt
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from helpers import (
    land_csv,
    open_evergreen,
    running_stack,
    sensor_readings,
    sensor_spec_yaml,
    signed_in_browser,
)

from devtools.localstack import LocalStack

pytestmark = pytest.mark.scheduler

FIRST = dt.date(2026, 3, 1)
AS_OF = FIRST + dt.timedelta(days=9)
SPECS = {"approved": "promotion: {mode: approval, approval_timeout_hours: 1}",
         "unanswered": "promotion: {mode: approval, approval_timeout_hours: 0.01}"}  # 36 s


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    home = tmp_path_factory.mktemp("approval")
    specs = home / "specs"
    specs.mkdir()
    for name, promotion in SPECS.items():
        (specs / f"{name}.yaml").write_text(sensor_spec_yaml(name, "UTC", promotion=promotion))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVERGREEN_SPECS_DIR", str(specs))
        with running_stack(home, [f"{n}_training" for n in SPECS], unpause=True,
                           extra_env={"EVERGREEN_SPECS_DIR": str(specs)}) as local:
            from evergreen.etl.ingest import run_feature_etl
            from evergreen.spec import get_spec

            for name in SPECS:
                spec = get_spec(name)
                land_csv(sensor_readings("UTC", FIRST, AS_OF, seed=2), spec.source.path)
                for i in range((AS_OF - FIRST).days + 1):
                    run_feature_etl(spec, FIRST + dt.timedelta(days=i))
            yield local


def _wait_task_state(stack: LocalStack, dag_id: str, run_id: str, task_id: str, states: set[str],
                     timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = {t["task_id"]: t["state"] for t in stack.task_instances(dag_id, run_id)}.get(task_id)
        if state in states:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{dag_id} {run_id} {task_id} stayed {state}, not {sorted(states)}")
        time.sleep(2)


def test_an_approved_promotion_names_its_approver(stack: LocalStack) -> None:
    from evergreen import registry
    from evergreen.spec import get_spec

    run = stack.trigger("approved_training", {"as_of": AS_OF.isoformat()})
    run_id = run["dag_run_id"]
    _wait_task_state(stack, "approved_training", run_id, "request_approval", {"awaiting_input"})
    quoted = urllib.parse.quote(run_id, safe="")
    detail = stack.get(f"/dags/approved_training/dagRuns/{quoted}/taskInstances/request_approval/-1/hitlDetails")
    assert detail["options"] == ["Approve", "Reject"] and detail["defaults"] == ["Reject"]
    assert "would replace champion (none)" in detail["body"] and "| no_regression_vs_champion |" in detail["body"]
    # Answered on the Evergreen page, which lists the waiting promotion and answers through Airflow's API.
    with signed_in_browser(stack.airflow_url, "admin", stack.password) as page:
        frame = open_evergreen(page, stack.airflow_url, "approved")
        waiting = frame.locator(f".approval[data-run-id='{run_id}']")
        assert "would replace champion (none)" in waiting.locator("pre").inner_text()
        waiting.get_by_role("button", name="Approve").click()
        waiting.locator(".answer").filter(has_text="answered: Approve").wait_for(timeout=30_000)
    finished = stack.wait_for_runs("approved_training", run_ids=[run_id], timeout=240)[0]
    assert finished["state"] == "success"
    decision = stack.xcom("approved_training", run_id, "promote_if_better")
    assert decision["kind"] == "promoted" and decision["approval"]["approved"] is True
    assert decision["approval"]["by"] == "admin" and decision["approval"]["choice"] == ["Approve"]
    assert [d["kind"] for d in registry.decision_history(get_spec("approved"))] == ["promoted"]


def test_no_answer_in_time_is_a_rejection(stack: LocalStack) -> None:
    run = stack.trigger("unanswered_training", {"as_of": AS_OF.isoformat()})
    run_id = run["dag_run_id"]
    finished = stack.wait_for_runs("unanswered_training", run_ids=[run_id], timeout=300)[0]
    assert finished["state"] == "success"
    decision = stack.xcom("unanswered_training", run_id, "promote_if_better")
    assert decision["kind"] == "rejected" and decision["version"] is None
    assert decision["approval"]["approved"] is False and decision["approval"]["by"] is None
    assert "no answer within" in decision["reasons"][0]
