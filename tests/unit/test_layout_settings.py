"""Storage keys (``evergreen.layout``) and the environment settings (``evergreen.settings``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from evergreen import layout, settings
from helpers import REPO

DAY = dt.date(2026, 10, 7)
SHA = "0123456789abcdef" * 4
PACKAGE = REPO / "include" / "evergreen"

# --------------------------------------------------------------------------------------------- layout


def test_zone_constants() -> None:
    assert (layout.FEATURES, layout.QUARANTINE, layout.PREDICTIONS, layout.DRIFT_REPORTS, layout.MODELS) == (
        "features", "quarantine", "predictions", "reports/drift", "models")
    assert (layout.MANIFEST, layout.REPORT_JSON, layout.REPORT_HTML) == ("_manifest.json", "report.json",
                                                                        "report.html")


def test_partition_keys() -> None:
    assert layout.partition_key(DAY) == "ds=2026-10-07"
    assert layout.partition_key(dt.date(999, 1, 2)) == "ds=0999-01-02"
    assert layout.zone(layout.FEATURES, "fraud") == "features/fraud"
    assert layout.zone(layout.DRIFT_REPORTS, "delivery_eta") == "reports/drift/delivery_eta"
    assert layout.partition(layout.FEATURES, "fraud", DAY) == "features/fraud/ds=2026-10-07"
    assert layout.partition(layout.QUARANTINE, "fraud", DAY) == "quarantine/fraud/ds=2026-10-07"
    assert layout.partition(layout.PREDICTIONS, "delivery_eta", DAY) == "predictions/delivery_eta/ds=2026-10-07"


def test_report_and_model_keys() -> None:
    assert layout.drift_report("fraud", DAY) == "reports/drift/fraud/ds=2026-10-07/report.json"
    assert layout.drift_report_html("fraud", DAY) == "reports/drift/fraud/ds=2026-10-07/report.html"
    assert layout.decisions("fraud") == "models/fraud/decisions"
    assert layout.gate_report("fraud", "abc123") == "models/fraud/decisions/abc123/gates.json"
    assert layout.trigger_ledger("delivery_eta") == "models/delivery_eta/drift_triggers"
    assert layout.trigger_entry("delivery_eta", DAY, SHA) == (
        "models/delivery_eta/drift_triggers/2026-10-07-0123456789ab.json")
    # Only the first 12 characters of the report hash name the entry.
    assert layout.trigger_entry("fraud", DAY, SHA[:12] + "f" * 52) == layout.trigger_entry("fraud", DAY, SHA)


@pytest.mark.parametrize("day", [DAY, dt.date(2024, 2, 29), dt.date(1, 1, 1), dt.date(9999, 12, 31)])
def test_parse_partition_key_round_trips(day: dt.date) -> None:
    assert layout.parse_partition_key(layout.partition_key(day)) == day


@pytest.mark.parametrize("name", [
    "", "ds", "ds=", "DS=2026-10-07", "dt=2026-10-07", "2026-10-07", "ds=2026-13-01", "ds=2026-02-30",
    "ds=2026-10-07 ", " ds=2026-10-07", "ds=2026-10-07.tmp", "ds=2026-10-7", "ds=26-10-07", "ds=tomorrow",
    "_manifest.json", "ds=2026-10-07/part.parquet",
])
def test_parse_partition_key_rejects_other_names(name: str) -> None:
    assert layout.parse_partition_key(name) is None


@pytest.mark.parametrize("name", ["ds=20261007", "ds=2026-W41-3"])
def test_parse_partition_key_rejects_non_canonical_dates(name: str) -> None:
    # Such a folder is not ``partition_key`` of any day, so listing it as a partition is wrong.
    assert layout.parse_partition_key(name) is None


# ------------------------------------------------------------------------------------------- settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in settings.NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_names() -> None:
    assert settings.NAMES == (
        "EVERGREEN_STORAGE_ROOT", "EVERGREEN_STORAGE_CONN_ID", "EVERGREEN_SPECS_DIR", "EVERGREEN_CODE_VERSION",
        "EVERGREEN_MLFLOW_ARTIFACT_ROOT", "EVERGREEN_TRAINING_SPILL_DIR", "EVERGREEN_CAS_SETTLE_SECONDS",
        "EVERGREEN_MLFLOW_UI_URL", "EVERGREEN_SERVING_POLL_SECONDS", "EVERGREEN_SERVING_FLUSH_ROWS",
        "EVERGREEN_SERVING_FLUSH_SECONDS", "EVERGREEN_SERVING_MAX_BUFFERED_ROWS")


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    assert settings.current() == settings.Settings(
        storage_root="~/.evergreen/storage", storage_conn_id="aws_default", specs_dir=None, code_version="",
        mlflow_artifact_root="", training_spill_dir=None, cas_settle_seconds=2.0, mlflow_ui_url="")
    assert settings.current() == settings.Settings()


def test_every_variable_is_read_and_typed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("EVERGREEN_STORAGE_ROOT", "s3://bucket/prefix")
    clean_env.setenv("EVERGREEN_STORAGE_CONN_ID", "minio")
    clean_env.setenv("EVERGREEN_SPECS_DIR", "/opt/specs")
    clean_env.setenv("EVERGREEN_CODE_VERSION", "  abc1234\n")
    clean_env.setenv("EVERGREEN_MLFLOW_ARTIFACT_ROOT", "file:///tmp/mlartifacts/")
    clean_env.setenv("EVERGREEN_TRAINING_SPILL_DIR", "/var/spill")
    clean_env.setenv("EVERGREEN_CAS_SETTLE_SECONDS", "0.5")
    current = settings.current()
    assert current == settings.Settings(
        storage_root="s3://bucket/prefix", storage_conn_id="minio", specs_dir="/opt/specs", code_version="abc1234",
        mlflow_artifact_root="file:///tmp/mlartifacts", training_spill_dir="/var/spill", cas_settle_seconds=0.5)
    assert type(current.cas_settle_seconds) is float


@pytest.mark.parametrize(("value", "expected"), [
    ("0.5", 0.5), ("0", 0.0), ("3", 3.0), (" 1.25 ", 1.25), ("", 2.0), ("1e-3", 0.001),
])
def test_cas_settle_seconds(clean_env: pytest.MonkeyPatch, value: str, expected: float) -> None:
    clean_env.setenv("EVERGREEN_CAS_SETTLE_SECONDS", value)
    assert settings.current().cas_settle_seconds == expected
    assert type(settings.current().cas_settle_seconds) is float


def test_cas_settle_seconds_not_a_number(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("EVERGREEN_CAS_SETTLE_SECONDS", "soon")
    with pytest.raises(ValueError, match="soon"):
        settings.current()


@pytest.mark.parametrize(("value", "expected"), [
    ("file:///tmp/a/", "file:///tmp/a"), ("s3://bucket/mlflow//", "s3://bucket/mlflow"),
    ("s3://bucket/mlflow", "s3://bucket/mlflow"), ("", ""),
])
def test_artifact_root_trailing_slashes_stripped(clean_env: pytest.MonkeyPatch, value: str, expected: str) -> None:
    clean_env.setenv("EVERGREEN_MLFLOW_ARTIFACT_ROOT", value)
    assert settings.current().mlflow_artifact_root == expected


def test_empty_values(clean_env: pytest.MonkeyPatch) -> None:
    for name in settings.NAMES:
        clean_env.setenv(name, "")
    current = settings.current()
    assert current.storage_root == "~/.evergreen/storage"
    assert current.specs_dir is None
    assert current.training_spill_dir is None
    assert current.code_version == ""
    assert current.mlflow_artifact_root == ""
    assert current.cas_settle_seconds == 2.0
    # An empty connection id is kept (it is set, unlike an unset one, which defaults to aws_default).
    assert current.storage_conn_id == ""


def test_a_changed_environment_is_seen_on_the_next_call(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("EVERGREEN_STORAGE_ROOT", str(tmp_path / "a"))
    first = settings.current()
    assert first.storage_root == str(tmp_path / "a")
    assert settings.current() is first  # same environment: the parsed value is reused
    clean_env.setenv("EVERGREEN_STORAGE_ROOT", str(tmp_path / "b"))
    clean_env.setenv("EVERGREEN_CAS_SETTLE_SECONDS", "0.25")
    second = settings.current()
    assert (second.storage_root, second.cas_settle_seconds) == (str(tmp_path / "b"), 0.25)
    clean_env.delenv("EVERGREEN_STORAGE_ROOT")
    clean_env.delenv("EVERGREEN_CAS_SETTLE_SECONDS")
    assert (settings.current().storage_root, settings.current().cas_settle_seconds) == ("~/.evergreen/storage", 2.0)
    clean_env.setenv("EVERGREEN_STORAGE_ROOT", str(tmp_path / "a"))
    assert settings.current() == first


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        settings.current().storage_root = "/elsewhere"  # type: ignore[misc]


# ----------------------------------------------------------------------- who reads the environment

ENV_READ = re.compile(r"\bos\.environ\b|\bos\.getenv\b|\bfrom\s+os\s+import\s+[^\n]*\b(environ|getenv)\b")
ALLOWED = {("etl/validation.py", 'os.environ.setdefault("GX_ANALYTICS_ENABLED"')}


def test_only_settings_reads_the_environment() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) >= 20
    assert PACKAGE / "settings.py" in sources
    found = set()
    for path in sources:
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "settings.py":
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if ENV_READ.search(line):
                allowed = [snippet for where, snippet in ALLOWED if where == relative and snippet in line]
                found.add((relative, line.strip() if not allowed else allowed[0]))
    # The GX switch is set (not read) in validation.py; nothing else touches os.environ.
    assert found == ALLOWED
    assert ENV_READ.search((PACKAGE / "settings.py").read_text(encoding="utf-8"))


def test_library_modules_do_not_import_airflow() -> None:
    probe = (
        "import json, sys\n"
        "import evergreen.storage, evergreen.layout, evergreen.settings, evergreen.spec, evergreen.training.model\n"
        "print(json.dumps({'airflow': sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')),"
        " 'evergreen': sorted(m for m in sys.modules if m.startswith('evergreen'))}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["airflow"] == []
    assert {"evergreen.storage", "evergreen.layout", "evergreen.settings", "evergreen.spec",
            "evergreen.training.model"} <= set(loaded["evergreen"])
