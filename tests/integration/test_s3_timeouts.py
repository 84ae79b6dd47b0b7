"""A hung S3 endpoint fails fast: the storage connection carries bounded botocore timeouts (issue 11's probe
took ~428 s per attempt with the defaults)."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from evergreen import storage
from helpers import REPO


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """Accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


def _production_config_kwargs() -> dict:
    text = (REPO / ".env.example").read_text()
    raw = re.search(r"^AIRFLOW_CONN_AWS_DEFAULT='(.*)'$", text, re.M).group(1)
    return json.loads(raw)["extra"]["config_kwargs"]


def _bound(config: dict) -> float:
    """Worst case of one storage call: at most two requests (a lookup is HEAD, then LIST), each with s3fs's
    own tries x botocore's attempts x a timeout, plus s3fs's backoff."""
    from s3fs import S3FileSystem

    tries = S3FileSystem.retries
    backoff = sum(min(1.7**i * 0.1, 15) for i in range(tries))
    per_request = tries * config["retries"]["total_max_attempts"] * max(config["connect_timeout"],
                                                                           config["read_timeout"]) + backoff
    return 2 * per_request


def test_the_production_connection_bounds_every_call() -> None:
    config = _production_config_kwargs()
    assert _bound(config) <= 90
    assert config["retries"]["total_max_attempts"] >= 2  # a 5xx answer is retried: s3fs itself does not


def test_a_hung_endpoint_fails_within_the_bounds(hung_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {**_production_config_kwargs(), "read_timeout": 2, "connect_timeout": 2}  # same shape, shorter
    # A connection of its own: filesystems are cached per connection, and other tests' aws_default points at
    # a healthy (moto) endpoint.
    conn_id = f"hung_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("EVERGREEN_STORAGE_CONN_ID", conn_id)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": hung_endpoint, "region_name": "us-east-1", "config_kwargs": config}}))
    monkeypatch.setenv("EVERGREEN_STORAGE_ROOT", "s3://hung-bucket/evergreen")
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        storage.read_manifest(storage.partition_dir("features", "fraud", dt.date(2026, 10, 1)))
    took = time.monotonic() - started
    bound = _bound(config)
    assert took < bound + 3, f"took {took:.1f} s (bound {bound:.1f} s): {failure.value!r}"
    assert "timeout" in repr(failure.value).lower() or "timed out" in str(failure.value).lower()
