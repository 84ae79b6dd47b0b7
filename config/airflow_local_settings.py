"""Airflow local settings for Evergreen: preload the task libraries in the processes that fork tasks.

Airflow imports this module (found on ``sys.path``: ``$AIRFLOW_HOME/config`` in the image, put on
``PYTHONPATH`` by ``devtools.localstack``) when any Airflow process starts. In the two processes whose
forks run tasks (the scheduler, whose LocalExecutor workers fork task processes, and a Celery worker) it
imports the libraries every ETL task needs, so each task process inherits them instead of importing them
again: pandas and pyarrow cost ~1 s of CPU per task on a small worker, more than the work of a
10k-row day. Other processes (API server, DAG processor, CLI) are left as they are, so DAG parsing stays
light. ``EVERGREEN_PRELOAD_MODULES`` (comma-separated, empty to disable) overrides the list.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__: list[str] = []  # no cluster policies here; Airflow scans public names for them

DEFAULT_PRELOAD = "pandas,pyarrow.parquet,evergreen.etl.ingest"


def _forks_tasks(argv: list[str]) -> bool:
    words = [a for a in argv[1:3] if not a.startswith("-")]
    return words[:1] == ["scheduler"] or words[:2] == ["celery", "worker"]


if _forks_tasks(sys.argv):
    for _name in filter(None, (m.strip() for m in os.environ.get("EVERGREEN_PRELOAD_MODULES",
                                                                   DEFAULT_PRELOAD).split(","))):
        importlib.import_module(_name)
