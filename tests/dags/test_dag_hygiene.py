"""DAG hygiene: every DAG imports cleanly, is documented and tagged, and parsing does no heavy work.

Parsing runs in a fresh interpreter that records what it imports, opens and connects to, so the
assertions see exactly what the DAG processor would pay for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, spec_dag_ids

ALL_DAGS = sorted([*spec_dag_ids("fraud"), *spec_dag_ids("delivery_eta")])
# boto3 is absent on purpose: Airflow itself imports it when an Asset is built (the amazon provider's
# URI normaliser), whatever the DAG does.
HEAVY_MODULES = ["pandas", "numpy", "pyarrow", "xgboost", "mlflow", "great_expectations", "sklearn", "scipy",
                 "s3fs", "matplotlib"]

PROBE = textwrap.dedent(
    """
    import json, os, runpy, socket, sys
    events = {"opens": [], "connects": []}
    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            events["opens"].append(os.fsdecode(args[0]))
        elif event == "socket.connect":
            events["connects"].append(repr(args[1]))
    sys.addaudithook(hook)

    from airflow.sdk import Connection, Variable
    from airflow.sdk.bases.hook import BaseHook
    def forbidden(*a, **k):
        raise RuntimeError("connection/variable lookup at parse time")
    Connection.get = classmethod(forbidden)
    Variable.get = staticmethod(forbidden)
    BaseHook.get_connection = classmethod(forbidden)
    before = set(sys.modules)
    from airflow.sdk import DAG
    namespace = runpy.run_path(sys.argv[1])
    dags = {k: v for k, v in namespace.items() if isinstance(v, DAG)}
    info = {}
    for dag_id, dag in dags.items():
        info[dag_id] = {
            "tags": sorted(dag.tags),
            "doc_md": bool(dag.doc_md and dag.doc_md.strip()),
            "retries": [t.retries for t in dag.tasks],
            "timeouts": [t.execution_timeout is not None for t in dag.tasks],
            "max_active_runs": dag.max_active_runs,
            "params": sorted(dag.params.keys()),
        }
    print(json.dumps({"dags": info, "modules": sorted(set(sys.modules) - before), **events}))
    """
)


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    sentinel = tmp_path_factory.mktemp("parse") / "storage-must-not-be-touched"
    env = {**os.environ, "EVERGREEN_STORAGE_ROOT": str(sentinel), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "dags" / "evergreen_dags.py")], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    data["sentinel"] = str(sentinel)
    return data


def test_every_spec_gets_its_dags(parsed: dict) -> None:
    assert sorted(parsed["dags"]) == ALL_DAGS


def test_dags_are_documented_tagged_and_retry(parsed: dict) -> None:
    for dag_id, info in parsed["dags"].items():
        assert info["doc_md"], dag_id
        assert "evergreen" in info["tags"], dag_id
        assert all(info["timeouts"]), f"{dag_id}: every task needs an execution_timeout"
        if not dag_id.endswith("_rollback"):  # a one-shot manual action, not safe to replay half-done
            assert max(info["retries"]) >= 1, f"{dag_id}: infrastructure errors must retry"
    assert parsed["dags"]["fraud_training"]["max_active_runs"] == 1
    assert parsed["dags"]["fraud_training"]["params"] == ["as_of", "drift_report", "dry_run", "reason", "window_days"]


def test_no_heavy_imports_at_parse_time(parsed: dict) -> None:
    loaded = {name.split(".")[0] for name in parsed["modules"]}
    assert not loaded.intersection(HEAVY_MODULES), sorted(loaded.intersection(HEAVY_MODULES))


def test_no_storage_or_network_io_at_parse_time(parsed: dict) -> None:
    assert parsed["connects"] == []
    assert not [p for p in parsed["opens"] if p.startswith(parsed["sentinel"])]
    assert not Path(parsed["sentinel"]).exists()
    # The only project files read are the DAG file, the library and the specs.
    project_files = {p for p in parsed["opens"] if p.startswith(str(REPO)) and "/.venv/" not in p}
    allowed = (str(REPO / "dags"), str(REPO / "include"))
    assert all(p.startswith(allowed) for p in project_files), sorted(project_files)


def test_dagbag_has_no_import_errors(airflow_db: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ALL_DAGS


def test_task_process_builds_only_its_own_dag(tmp_path: Path) -> None:
    # What Airflow's task runner sets before it parses the file for one task (the parsing context).
    env = {**os.environ, "EVERGREEN_STORAGE_ROOT": str(tmp_path), "_AIRFLOW_PARSING_CONTEXT_DAG_ID": "fraud_training",
           "_AIRFLOW_PARSING_CONTEXT_TASK_ID": "train_challenger"}
    result = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "dags" / "evergreen_dags.py")], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert list(json.loads(result.stdout.strip().splitlines()[-1])["dags"]) == ["fraud_training"]


@pytest.mark.parametrize(("argv", "preloads"), [
    (["airflow", "scheduler"], True),
    (["airflow", "celery", "worker"], True),
    (["airflow", "dag-processor"], False),
    (["airflow", "api-server"], False),
    (["airflow", "dags", "list"], False),
])
def test_local_settings_preload_only_where_tasks_are_forked(argv: list[str], preloads: bool) -> None:
    # config/airflow_local_settings.py, as Airflow imports it at start-up in each of these processes.
    probe = (f"import sys; sys.argv = {argv!r}; import airflow_local_settings; "
             "print(sorted(m for m in ('pandas', 'pyarrow', 'evergreen.etl.ingest') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "config")}
    env.pop("EVERGREEN_PRELOAD_MODULES", None)
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert loaded == (["evergreen.etl.ingest", "pandas", "pyarrow"] if preloads else [])


def test_spec_errors_file_parses_light_and_defines_no_dag(tmp_path: Path) -> None:
    env = {**os.environ, "EVERGREEN_STORAGE_ROOT": str(tmp_path / "never"), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "dags" / "evergreen_spec_errors.py")], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["dags"] == {} and data["connects"] == []
    loaded = {name.split(".")[0] for name in data["modules"]}
    assert not loaded.intersection(HEAVY_MODULES), sorted(loaded.intersection(HEAVY_MODULES))
    assert not (tmp_path / "never").exists()
