"""Test fixtures: an isolated Airflow home and metadata DB, local and S3 (moto server) storage, MLflow.

The environment is set before Airflow is imported anywhere, so every test talks to its own SQLite
metadata database and never to a user's ``~/airflow``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="evergreen-tests-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(_SESSION_HOME / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(_REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(_REPO / "plugins"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{_SESSION_HOME / 'mlflow.db'}",
        "EVERGREEN_STORAGE_ROOT": str(_SESSION_HOME / "storage-default"),
        "EVERGREEN_CAS_SETTLE_SECONDS": "0.2",
    }
)
os.environ.pop("EVERGREEN_SPECS_DIR", None)

from helpers import VENV_BIN, airflow_cli, free_port  # noqa: E402 - after the environment is set

# The slowest tiers first: `make test` runs two workers that take whole files (module fixtures are built
# once), and a long file that starts last would leave one worker idle at the end.
_TIER_ORDER = ("production", "scheduler", "realdata", "bench", "slow")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def tier(item: pytest.Item) -> int:
        marks = {mark.name for mark in item.iter_markers()}
        return next((i for i, name in enumerate(_TIER_ORDER) if name in marks), len(_TIER_ORDER))

    first_tier: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        first_tier[module] = min(first_tier.get(module, len(_TIER_ORDER)), tier(item))
    items.sort(key=lambda item: first_tier[item.nodeid.split("::")[0]])  # stable: file order otherwise


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB for the session (``airflow db migrate`` once)."""
    result = airflow_cli("db", "migrate")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture
def storage_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh local storage root for one test."""
    root = tmp_path / "storage"
    root.mkdir()
    monkeypatch.setenv("EVERGREEN_STORAGE_ROOT", str(root))
    return root


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh MLflow tracking + registry store (SQLite, artifacts under tmp_path) for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.setenv("EVERGREEN_MLFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    # MLflow keeps a process-wide URI once anyone sets one (and it wins over the environment): set ours.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    # Unset them again (MLflow drops its variables too; monkeypatch then restores the session's), so the
    # environment decides for the next test.
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API over HTTP (moto's server mode) for the session."""
    port = free_port()
    log = open(_SESSION_HOME / "moto.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture
def s3_storage(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Storage root on S3 (moto) through the amazon provider's ``aws_default`` connection."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = "evergreen-test"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
    root = f"s3://{bucket}/{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("EVERGREEN_STORAGE_ROOT", root)
    return root


@pytest.fixture
def clean_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="evergreen-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
