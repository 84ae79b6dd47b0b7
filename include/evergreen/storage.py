"""The storage layer: one root URI, date partitions, atomic publication with manifests.

The root (``settings.storage_root``) is a local folder (default ``~/.evergreen/storage``) or
``s3://bucket/prefix``, reached through Airflow's ``ObjectStoragePath`` and the connection
``settings.storage_conn_id``; ``evergreen.layout`` names every key under it. Airflow is imported only
when a path is built, so the model code a served model needs never imports it.

A partition exists only once its ``_manifest.json`` does. Data files are named by their content hash and
written before the manifest, so a reader following the manifest never sees half a partition, and a
rewrite with the same content produces the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evergreen import layout, settings
from evergreen.errors import IntegrityError, UnpublishedPartitionError

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import ObjectStoragePath

MANIFEST = layout.MANIFEST
LOCAL_PROTOCOLS = {"", "file", "local"}


def _object_path(uri: str) -> ObjectStoragePath:
    from airflow.sdk import ObjectStoragePath

    if uri.startswith("file://"):
        return ObjectStoragePath(uri)
    return ObjectStoragePath(uri, conn_id=settings.current().storage_conn_id)


def storage_root() -> ObjectStoragePath:
    """The configured root as an ObjectStoragePath."""
    raw = settings.current().storage_root
    if "://" not in raw:
        return _object_path(Path(raw).expanduser().resolve().as_uri())
    return _object_path(raw)


def at(key: str) -> ObjectStoragePath:
    """The path of a storage key (see ``evergreen.layout``) under the root."""
    return storage_root() / key


def resolve(location: str) -> ObjectStoragePath:
    """A full URI as is, anything else relative to the storage root."""
    if "://" in location:
        return _object_path(location)
    return at(location)


def relative(path: ObjectStoragePath) -> str:
    """``path`` as a key relative to the root when it lies under it, else the full URI."""
    root = str(storage_root()).rstrip("/") + "/"
    text = str(path)
    return text[len(root):] if text.startswith(root) else text


def is_local(path: ObjectStoragePath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def partition_dir(zone: str, spec_name: str, ds: dt.date) -> ObjectStoragePath:
    """``<root>/<zone>/<spec>/ds=YYYY-MM-DD``."""
    return at(layout.partition(zone, spec_name, ds))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_digest(content_hashes: Mapping[str, str]) -> str:
    """sha256 over the sorted ``(ds, content_sha256)`` pairs of some partitions: what a model was trained on."""
    return sha256_bytes(canonical_json(sorted([ds, sha] for ds, sha in content_hashes.items())))


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: same object, same bytes."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n").encode()


def _written_sibling(target: Path, data: bytes) -> Path:
    """``data`` written and synced to a hidden temporary file beside ``target`` (to rename or link into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def write_bytes_atomic(path: ObjectStoragePath, data: bytes) -> None:
    """Write so a reader sees the old object or the new one, never a partial one.

    An object-store PUT is atomic already; on a local filesystem write a sibling temp file and rename.
    """
    if is_local(path):
        target = Path(path.path)
        os.replace(_written_sibling(target, data), target)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(data)


def create_exclusive(path: ObjectStoragePath, data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if it does not exist; True if this call created it.

    A conditional create: ``O_EXCL`` on a local filesystem, ``If-None-Match: *`` on S3, so exactly one of
    any number of concurrent callers, on any machines, wins.
    """
    if is_local(path):
        # Written in full under a temporary name, then hard-linked into place (link fails if the name is
        # taken): the object is never seen empty or half written, even if this process dies mid-way.
        target = Path(path.path)
        tmp = _written_sibling(target, data)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True
    try:
        with path.open("xb") as fh:
            fh.write(data)
    except FileExistsError:
        return False
    except OSError as exc:  # s3fs reports a failed If-None-Match without its condition as EINVAL
        if "precondition" in str(exc).lower():
            return False
        raise
    return True


def write_json_atomic(path: ObjectStoragePath, obj: Any) -> str:
    """Write canonical JSON atomically; return its sha256."""
    data = canonical_json(obj)
    write_bytes_atomic(path, data)
    return sha256_bytes(data)


def read_json(path: ObjectStoragePath) -> Any:
    return json.loads(path.read_bytes())


def read_manifest(directory: ObjectStoragePath) -> dict[str, Any] | None:
    """The partition's manifest, or None if the partition is not published."""
    manifest = directory / MANIFEST
    if not manifest.exists():
        return None
    return read_json(manifest)


def stage_data_file(directory: ObjectStoragePath, data: bytes, suffix: str = ".parquet") -> str:
    """Write a data file named by its content hash inside a partition; invisible until published."""
    name = f"part-{sha256_bytes(data)[:16]}{suffix}"
    write_bytes_atomic(directory / name, data)
    return name


def publish(directory: ObjectStoragePath, manifest: Mapping[str, Any]) -> str:
    """Commit a partition: write the manifest (the commit point), then drop files it does not list.

    ``manifest["files"]`` lists the staged data files by name. Returns the manifest's sha256.
    """
    listed = {f["name"] for f in manifest.get("files", [])}
    missing = sorted(name for name in listed if not (directory / name).exists())
    if missing:
        raise FileNotFoundError(f"cannot publish {directory}: staged files missing: {missing}")
    digest = write_json_atomic(directory / MANIFEST, dict(manifest))
    for child in directory.iterdir():
        if child.name != MANIFEST and child.name not in listed and child.is_file():
            child.unlink()
    return digest


def remove_tree(directory: ObjectStoragePath) -> None:
    """Delete a partition folder and everything in it (no-op when absent)."""
    if not directory.exists():
        return
    if is_local(directory):
        import shutil

        shutil.rmtree(directory.path)
        return
    directory.fs.rm(directory.path, recursive=True)


def list_partitions(zone: str, spec_name: str, published_only: bool = True) -> dict[dt.date, ObjectStoragePath]:
    """Partitions of a zone by date; by default only those with a manifest."""
    base = at(layout.zone(zone, spec_name))
    if not base.exists():
        return {}
    found: dict[dt.date, ObjectStoragePath] = {}
    for child in base.iterdir():
        ds = layout.parse_partition_key(child.name)
        if ds is None:
            continue
        if published_only and not (child / MANIFEST).exists():
            continue
        found[ds] = child
    return dict(sorted(found.items()))


def parquet_frame(source: Any, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file (a path or a file object) as a DataFrame: what ``pd.read_parquet`` returns, without
    its consolidation copy into 2-D blocks (one block per column)."""
    import pyarrow.parquet as pq

    return pq.read_table(source, columns=columns).to_pandas(split_blocks=True, self_destruct=True)


def read_partition(directory: ObjectStoragePath, columns: Iterable[str] | None = None, *,
                   expected_sha256: str | None = None) -> pd.DataFrame:
    """The data files a partition's manifest lists, each file's hash verified.

    ``columns``: only those (of the ones present in the files). ``expected_sha256``: the manifest's
    ``content_sha256`` the caller selected the partition by; a republished partition is refused.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    manifest = read_manifest(directory)
    if manifest is None:
        raise UnpublishedPartitionError(f"partition {directory} is not published (no {MANIFEST})")
    if expected_sha256 is not None and manifest["content_sha256"] != expected_sha256:
        raise IntegrityError(
            f"{directory} was republished after it was selected "
            f"({expected_sha256[:12]} -> {str(manifest['content_sha256'])[:12]}); select it again"
        )
    wanted = list(columns) if columns is not None else None
    frames = []
    for entry in manifest["files"]:
        try:
            data = (directory / entry["name"]).read_bytes()
        except FileNotFoundError as exc:  # republished (old files dropped) while we were reading
            raise IntegrityError(f"{directory}: {exc}") from exc
        if sha256_bytes(data) != entry["sha256"]:
            raise IntegrityError(f"{directory / entry['name']} does not match its manifest hash")
        present = None
        if wanted is not None:
            names = set(pq.read_schema(io.BytesIO(data)).names)
            present = [c for c in wanted if c in names]
        frames.append(parquet_frame(io.BytesIO(data), present))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


# An append-only partition's file: its UTC write time (names sort in write order) and its content hash.
APPENDED_PART = re.compile(r"^part-\d{8}T\d{12}Z-(?P<sha>[0-9a-f]{16})\.parquet$")


def append_part(directory: ObjectStoragePath, data: bytes, *, written_at: dt.datetime) -> str:
    """Add a Parquet file to an append-only partition: one without a manifest, each file complete on its own,
    so writers on any number of machines add files without coordinating (the online prediction log).
    Written atomically, named by its write time and content hash (:data:`APPENDED_PART`). Returns the name."""
    name = f"part-{written_at.astimezone(dt.UTC):%Y%m%dT%H%M%S%fZ}-{sha256_bytes(data)[:16]}.parquet"
    write_bytes_atomic(directory / name, data)
    return name


def read_parts(directory: ObjectStoragePath) -> tuple[pd.DataFrame, list[str]] | None:
    """Every file of an append-only partition (:func:`append_part`), oldest first, each checked against the
    hash in its name; and their names. None when there is none (temporary files are not parts)."""
    import pandas as pd

    if not directory.exists():
        return None
    names = sorted(child.name for child in directory.iterdir() if APPENDED_PART.match(child.name))
    if not names:
        return None
    frames = []
    for name in names:
        data = (directory / name).read_bytes()
        if not sha256_bytes(data).startswith(APPENDED_PART.match(name)["sha"]):
            raise IntegrityError(f"{directory / name} does not match the hash in its name")
        frames.append(pd.read_parquet(io.BytesIO(data)))
    return (frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)), names


def frame_to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic Parquet bytes for a frame (no index, fixed compression, stable row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=256_000, write_statistics=True)
    return buffer.getvalue()
