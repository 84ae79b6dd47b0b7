"""The Airflow floor of the training DAG (``make bench``, stage ``training``): the same task graph as
``<spec>_training`` (assemble, train, gates, promote, a branch and its four outcome tasks), each task
returning at once, run by ``airflow dags test`` like the real one. Its wall time is what the run of a
training DAG costs before any work: the CLI's start-up, parsing, and each task's start through the
execution API. Not installed and not in ``dags/``: the benchmark points a DAGS_FOLDER here."""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

OUTCOMES = ("dry_run", "promoted", "registered_challenger", "rejected")


@dag(dag_id="evergreen_training_floor", schedule=None, start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
     catchup=False, max_active_runs=1)
def training_floor() -> None:
    from airflow.providers.standard.operators.empty import EmptyOperator

    @task(multiple_outputs=False)
    def assemble_training_set() -> dict[str, str]:
        return {"window": "ok"}

    @task(multiple_outputs=False)
    def train_challenger(window: dict[str, str]) -> dict[str, str]:
        return {"run_id": "ok", **window}

    @task(multiple_outputs=False)
    def evaluate_gates(trained: dict[str, str]) -> dict[str, str]:
        return {"passed": "yes", **trained}

    @task(multiple_outputs=False)
    def promote_if_better(trained: dict[str, str], report: dict[str, str]) -> dict[str, str]:
        return {"kind": "promoted"}

    @task.branch
    def branch_on_decision(decision: dict[str, str]) -> str:
        return decision["kind"]

    trained = train_challenger(assemble_training_set())
    branch = branch_on_decision(promote_if_better(trained, evaluate_gates(trained)))
    for outcome in OUTCOMES:
        branch >> EmptyOperator(task_id=outcome)


training_floor()
