"""The benchmark harness at a tiny scale (XS: 500 rows/day x 12 days, 1 repeat), so it cannot rot.

Evidently (its own venv, a download) and the scheduler backfill (a whole Airflow stack) are skipped here;
``make bench`` runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from evergreen.factory import BUILDERS
from helpers import REPO

pytestmark = [pytest.mark.bench, pytest.mark.slow]


def test_measure_reports_peak_memory_and_time_from_the_os(tmp_path: Path) -> None:
    # From a small parent: a child's peak RSS starts at its parent's RSS at fork (this pytest is big).
    script = f"""
import json, sys
from pathlib import Path
from benchmarks.measure import measure, summarize
log = Path({str(tmp_path / "log")!r})
code = "import time\\nblock = bytearray(300 * 1024 * 1024)\\nblock[::4096] = b'x' * len(block[::4096])\\ntime.sleep(0.2)"
big = measure([sys.executable, "-c", code], log=log)
small = measure([sys.executable, "-c", "pass"], log=log)
print(json.dumps({{"big": big, "small": small, "stats": summarize([big, small])}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    big, small, stats = out["big"], out["small"], out["stats"]
    assert big["peak_rss_mib"] >= 300
    assert big["wall_seconds"] >= 0.2
    assert small["peak_rss_mib"] < 100
    assert stats["peak_rss_mib"]["min"] == small["peak_rss_mib"]
    assert stats["peak_rss_mib"]["max"] == big["peak_rss_mib"]


def test_harness_runs_at_xs(tmp_path: Path, airflow_db: Path) -> None:
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "benchmarks.run", "--scale", "XS", "--repeats", "1",
            "--only", "etl,drift,training,parse,serving", "--skip-evidently",
            "--results-dir", str(results), "--work-dir", str(tmp_path / "work"),
            "--data-dir", str(tmp_path / "data"), "--airflow-home", str(airflow_db)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| benchmark | measure | min | median | max |" in proc.stdout

    payload = json.loads((results / "latest-XS.json").read_text())
    assert payload["machine"]["cores"] >= 1 and payload["machine"]["memory_gib"] > 0
    assert payload["scale"] == {"name": "XS", "rows_per_day": 500, "days": 12}
    found = payload["results"]
    for name in ("etl", "etl_pandas", "validate", "validate_pandas", "drift_profile", "drift_report_drifted",
                 "drift_report_clean", "training_dag", "training_bare", "parse"):
        summary = found[name]["summary"]
        assert set(summary["wall_seconds"]) == {"min", "median", "max"}, name
        assert summary["peak_rss_mib"]["median"] > 50, name
    # Every stage of the training DAG succeeded and was timed.
    dag = found["training_dag"]["summary"]
    assert {"task_assemble_training_set_seconds", "task_train_challenger_seconds",
            "task_evaluate_gates_seconds", "task_promote_if_better_seconds"} <= set(dag)
    assert found["training_bare"]["runs"][0]["rows"] > 0
    # The Airflow floor: the same task graph doing nothing, under `airflow dags test`, below the real DAG.
    floor = found["training_airflow_floor"]["summary"]["wall_seconds"]["median"]
    assert 0 < floor < dag["wall_seconds"]["median"]
    overhead = found["training_overhead"]
    assert overhead["airflow_floor_seconds"] == floor
    assert overhead["floor_plus_bare_over_bare"] == pytest.approx(
        (floor + found["training_bare"]["summary"]["wall_seconds"]["median"])
        / found["training_bare"]["summary"]["wall_seconds"]["median"])
    # Injected covariate drift is detected, the clean day is not.
    assert found["drift_report_drifted"]["verdict"] is True
    assert found["drift_report_clean"]["verdict"] is False
    # Six DAGs per spec, and the outcomes DAG of each spec whose labels come from their own source (fraud's).
    assert found["parse"]["specs"] >= 2
    assert found["parse"]["dags"] == (len(BUILDERS) - 1) * found["parse"]["specs"] + found["parse"]["specs_with_labels"]
    # evergreen serve of a freshly promoted champion: latencies over HTTP, every row served logged.
    serving = found["serving"]["runs"][0]
    assert serving["one_row_requests"] == 50 and serving["batch_requests"] == 5 and serving["batch_rows"] == 1000
    assert 0 < serving["one_row_p50_ms"] <= serving["one_row_p99_ms"] and 0 < serving["batch_p50_ms"] <= serving["batch_p99_ms"]
    assert serving["logged_rows"] == 55 + 10 * 1000  # measured and warm-up requests
    assert "| serving | one_row_p99_ms |" in proc.stdout
    statuses = {t["target"]: t["status"] for t in payload["targets"]}
    assert statuses["training DAG at L: wall time"] == "n/a at XS"
    assert statuses["training DAG over the bare fit"] == "n/a at XS"
    assert "not measured" in statuses["drift report vs Evidently: speed-up"]
    markdown = (results / "latest-XS.md").read_text()
    assert "## Targets" in markdown and "cores" in markdown
