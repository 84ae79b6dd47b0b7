#!/usr/bin/env python3
"""DAG import check: load dags/ with Airflow's own DagBag, as the DAG processor would, and fail on any import
error or on a valid spec that built no DAG. `make dag-check` and the CI workflow (.github/workflows/ci.yml) run it.

No metadata database is needed. Without AIRFLOW_HOME a throw-away one is used, so ~/airflow is never touched.

    .venv/bin/python scripts/check-dags.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    if os.environ.get("AIRFLOW_HOME"):
        return check()
    with tempfile.TemporaryDirectory(prefix="evergreen-dag-check-") as home:
        os.environ["AIRFLOW_HOME"] = home
        return check()


def check() -> int:
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    from airflow.dag_processing.dagbag import DagBag
    from evergreen.spec import load_valid_specs

    bag = DagBag(dag_folder=str(REPO / "dags"), safe_mode=False)
    failures = [f"import error in {path}:\n{error}" for path, error in sorted(bag.import_errors.items())]
    specs, _ = load_valid_specs()
    for name in sorted(specs):
        if not any(dag_id.startswith(f"{name}_") for dag_id in bag.dags):
            failures.append(f"spec {name!r} built no DAG")
    if not bag.dags:
        failures.append("no DAG at all in dags/")
    for dag_id in sorted(bag.dags):
        print(f"ok  {dag_id}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        print(f"dag-check: FAILED ({len(failures)} problem(s), {len(bag.dags)} DAGs)", file=sys.stderr)
        return 1
    print(f"dag-check: {len(bag.dags)} DAGs from {len(specs)} specs imported without errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
