"""Storage: atomic publication with manifests, content-hash names, local roots."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from evergreen import storage


def test_default_local_root_is_a_file_uri(storage_root: Path) -> None:
    root = storage.storage_root()
    assert root.protocol == "file"
    assert root.path.rstrip("/") == str(storage_root)


def test_unpublished_partition_is_invisible(storage_root: Path) -> None:
    directory = storage.partition_dir("features", "demo", dt.date(2026, 11, 1))
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    name = storage.stage_data_file(directory, storage.frame_to_parquet_bytes(frame))
    assert (directory / name).exists()
    assert storage.list_partitions("features", "demo") == {}
    assert storage.read_manifest(directory) is None
    with pytest.raises(FileNotFoundError, match="not published"):
        storage.read_partition(directory)


def test_publish_commits_and_drops_stale_files(storage_root: Path) -> None:
    day = dt.date(2026, 11, 1)
    directory = storage.partition_dir("features", "demo", day)
    old = storage.frame_to_parquet_bytes(pd.DataFrame({"a": [1.0]}))
    old_name = storage.stage_data_file(directory, old)
    storage.publish(directory, {"files": [{"name": old_name, "sha256": storage.sha256_bytes(old)}]})
    new = storage.frame_to_parquet_bytes(pd.DataFrame({"a": [2.0, 3.0]}))
    new_name = storage.stage_data_file(directory, new)
    storage.publish(directory, {"files": [{"name": new_name, "sha256": storage.sha256_bytes(new)}]})
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted([storage.MANIFEST, new_name])
    assert storage.read_partition(directory)["a"].tolist() == [2.0, 3.0]
    assert list(storage.list_partitions("features", "demo")) == [day]
    # No temp files are left behind by atomic writes.
    assert not [p for p in Path(storage_root).rglob("*.tmp")]


def test_publish_refuses_missing_staged_file(storage_root: Path) -> None:
    directory = storage.partition_dir("features", "demo", dt.date(2026, 11, 2))
    with pytest.raises(FileNotFoundError, match="staged files missing"):
        storage.publish(directory, {"files": [{"name": "part-x.parquet", "sha256": "0"}]})
    assert storage.read_manifest(directory) is None


def test_tampered_data_file_is_detected(storage_root: Path) -> None:
    directory = storage.partition_dir("features", "demo", dt.date(2026, 11, 3))
    data = storage.frame_to_parquet_bytes(pd.DataFrame({"a": [1.0]}))
    name = storage.stage_data_file(directory, data)
    storage.publish(directory, {"files": [{"name": name, "sha256": storage.sha256_bytes(data)}]})
    (Path(directory.path) / name).write_bytes(storage.frame_to_parquet_bytes(pd.DataFrame({"a": [9.0]})))
    with pytest.raises(ValueError, match="does not match its manifest"):
        storage.read_partition(directory)


def test_parquet_bytes_are_deterministic() -> None:
    frame = pd.DataFrame({"a": [1.5, None], "b": ["x", None], "t": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True)})
    assert storage.frame_to_parquet_bytes(frame) == storage.frame_to_parquet_bytes(frame.copy())


def _exclusive_creates(path) -> list[bool]:
    import threading

    results: list[bool] = []
    barrier = threading.Barrier(4, timeout=30)

    def create(i: int) -> None:
        barrier.wait()
        results.append(storage.create_exclusive(path, f"writer {i}\n".encode()))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_exclusive_create_has_one_winner_locally(storage_root: Path) -> None:
    path = storage.at("models/demo/registry.lock")
    assert sorted(_exclusive_creates(path)) == [False, False, False, True]
    winner = path.read_bytes()
    assert storage.create_exclusive(path, b"late\n") is False and path.read_bytes() == winner


@pytest.mark.s3
def test_exclusive_create_has_one_winner_on_s3(s3_storage: str) -> None:
    path = storage.at("models/demo/registry.lock")
    assert sorted(_exclusive_creates(path)) == [False, False, False, True]
    winner = path.read_bytes()
    assert winner.startswith(b"writer ")
    assert storage.create_exclusive(path, b"late\n") is False and path.read_bytes() == winner
    path.unlink()
    assert storage.create_exclusive(path, b"again\n") is True
