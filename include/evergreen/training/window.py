"""The training window: which published partitions a run uses, their split by day, and reading a day.

Everything the run depends on is pinned: the window is a list of published partitions with their
manifest hashes (``data_digest``), the split is by day and row caps are hash-based, so the same
partitions give the same rows in the same order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evergreen import layout, storage
from evergreen.errors import DataQualityError
from evergreen.etl.features import add_time_features, sort_canonical
from evergreen.spec import PipelineSpec, TaskType


@dataclass(frozen=True)
class TrainingWindow:
    """The published partitions a training run uses and their time-ordered split (JSON via to_dict)."""

    spec: str
    as_of: dt.date
    start: dt.date
    partitions: list[dt.date]
    missing_days: list[dt.date]
    data_digest: str
    rows: int
    train_days: list[dt.date]
    validation_days: list[dt.date]
    holdout_days: list[dt.date]
    # ds -> manifest content_sha256: loading re-checks these so the digest describes what was read.
    content_hashes: dict[str, str] = field(default_factory=dict)
    # Separate labels (spec ``labels:``): the labels known as of this day, and their digest (in data_digest).
    labels_as_of: dt.date | None = None
    labels_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("as_of", "start", "labels_as_of"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        for key in ("partitions", "missing_days", "train_days", "validation_days", "holdout_days"):
            out[key] = [d.isoformat() for d in out[key]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingWindow:
        def days(key: str) -> list[dt.date]:
            return [dt.date.fromisoformat(d) for d in data[key]]

        return cls(
            spec=data["spec"],
            as_of=dt.date.fromisoformat(data["as_of"]),
            start=dt.date.fromisoformat(data["start"]),
            partitions=days("partitions"),
            missing_days=days("missing_days"),
            data_digest=data["data_digest"],
            rows=int(data["rows"]),
            train_days=days("train_days"),
            validation_days=days("validation_days"),
            holdout_days=days("holdout_days"),
            content_hashes=dict(data.get("content_hashes", {})),
            labels_as_of=dt.date.fromisoformat(data["labels_as_of"]) if data.get("labels_as_of") else None,
            labels_digest=data.get("labels_digest"),
        )

    @property
    def partitions_summary(self) -> str:
        """Compact form for tags: ``first..last (n days)``."""
        if not self.partitions:
            return "(none)"
        return f"{self.partitions[0]}..{self.partitions[-1]} ({len(self.partitions)} days)"


def select_window(spec: PipelineSpec, as_of: dt.date, window_days: int | None = None) -> TrainingWindow:
    """Choose the published partitions in ``(as_of - days, as_of]`` and split them by day (manifests only).

    Days before the pipeline's history starts (``schedule.start_date`` or the first partition, whichever
    is earlier) are not counted as missing, so a young pipeline can train once it has ``min_days``.
    """
    cfg = spec.window
    days = window_days if window_days is not None else cfg.days
    if days < 1:
        raise ValueError(f"window_days must be positive, got {days}")
    start = as_of - dt.timedelta(days=days - 1)
    found = storage.list_partitions(layout.FEATURES, spec.name)
    # Never look past as_of: a backfill for an old date must not see data from its future.
    in_window = {ds: path for ds, path in found.items() if start <= ds <= as_of}

    hashes: dict[str, str] = {}
    rows_by_day: dict[dt.date, int] = {}
    classes_by_day: dict[dt.date, set[str]] = {}
    manifests = {ds: m for ds, m in ((ds, storage.read_manifest(path)) for ds, path in sorted(in_window.items()))
                 if m is not None}  # (None: unpublished between listing and reading)
    book = None
    if spec.labels is not None:
        # Late labels: a day counts with the labels that had arrived by as_of, never later ones.
        from evergreen.outcomes import label_book, labelled_rows_by_day

        book = label_book(spec, as_of, since=start)
        counted = labelled_rows_by_day(spec, book, {ds: str(m["content_sha256"]) for ds, m in manifests.items()})
    for ds, manifest in manifests.items():
        target = manifest.get("target") or {}
        rows = int(target.get("labelled_rows", manifest["rows"]))
        classes = {c for c, n in (target.get("classes") or {}).items() if n}
        if book is not None:
            rows, classes = counted[ds]
        if rows == 0:  # nothing to learn from or evaluate on (all labels missing): not a window day
            continue
        hashes[ds.isoformat()] = str(manifest["content_sha256"])
        rows_by_day[ds] = min(rows, cfg.max_rows_per_day) if cfg.max_rows_per_day else rows
        if spec.task_type == TaskType.BINARY_CLASSIFICATION and (classes or book is not None):
            classes_by_day[ds] = classes
    present = sorted(rows_by_day)

    history_start = min([spec.schedule.start_date, *present[:1]])
    expected_from = max(start, history_start)
    # A feed of positives only (labels.absent_label) labels a day once it matured: the newer days are
    # expected to be unlabelled, not missing.
    expected_until = as_of - dt.timedelta(days=spec.labels.max_delay_days) if spec.absent_label_value is not None \
        else as_of
    missing = [
        expected_from + dt.timedelta(days=i)
        for i in range((expected_until - expected_from).days + 1)
        if expected_from + dt.timedelta(days=i) not in rows_by_day
    ]
    rows = sum(rows_by_day.values())
    where = f"{spec.name} window {start}..{as_of}"
    if len(present) < cfg.min_days:
        raise DataQualityError(f"{where}: {len(present)} published feature partitions, need at least {cfg.min_days}")
    if len(missing) > cfg.max_missing_days:
        shown = ", ".join(d.isoformat() for d in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataQualityError(
            f"{where}: {len(missing)} days missing (max_missing_days={cfg.max_missing_days}): {shown}"
        )
    if rows < cfg.min_rows:
        raise DataQualityError(f"{where}: {rows} rows in {len(present)} partitions, need at least {cfg.min_rows}")

    holdout_days = _holdout_size(spec, present, classes_by_day)
    holdout = present[-holdout_days:]
    validation = present[-(holdout_days + cfg.validation_days):-holdout_days]
    train = present[: -(holdout_days + cfg.validation_days)]
    return TrainingWindow(
        spec=spec.name,
        as_of=as_of,
        start=start,
        partitions=present,
        missing_days=missing,
        data_digest=storage.data_digest({**hashes, **({"labels": book.digest} if book is not None else {})}),
        rows=rows,
        train_days=train,
        validation_days=validation,
        holdout_days=holdout,
        content_hashes=hashes,
        labels_as_of=as_of if book is not None else None,
        labels_digest=book.digest if book is not None else None,
    )


def _holdout_size(spec: PipelineSpec, present: list[dt.date], classes_by_day: Mapping[dt.date, set[str]]) -> int:
    """``holdout_days``, extended back one day at a time while a binary holdout lacks a class (a weekend of
    an office dataset holds no positives), as long as ``min_days - holdout_days - validation_days`` training
    days remain. Without class counts in the manifests (older partitions) the holdout is not extended."""
    cfg = spec.window
    size = cfg.holdout_days
    if spec.task_type != TaskType.BINARY_CLASSIFICATION:
        return size
    limit = len(present) - cfg.validation_days - max(1, cfg.min_days - cfg.holdout_days - cfg.validation_days)

    def both_classes(days: list[dt.date]) -> bool:
        if not all(d in classes_by_day for d in days):
            return True  # unknown: leave it to the gates to say
        return set().union(*(classes_by_day[d] for d in days)) >= {"0", "1"}

    while size < limit and not both_classes(present[-size:]):
        size += 1
    return size


def cap_rows(frame: pd.DataFrame, keys: list[str], cap: int) -> pd.DataFrame:
    """Keep the ``cap`` rows with the smallest entity-key hash: deterministic, unbiased, no RNG state."""
    if len(frame) <= cap:
        return frame
    key_hash = pd.util.hash_pandas_object(frame[keys].astype("str"), index=False).to_numpy()
    keep = np.sort(np.argsort(key_hash, kind="stable")[:cap])
    return frame.iloc[keep]


def training_columns(spec: PipelineSpec) -> list[str]:
    return spec.feature_table_columns


def labelled(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with a label: training and evaluation never see the others (``target.allow_missing``)."""
    if not spec.labels_may_be_missing:
        return frame  # a missing label is refused by target_values
    return frame[frame[spec.target.name].notna()]


def read_window_day(spec: PipelineSpec, window: TrainingWindow | None, ds: dt.date,
                    columns: list[str] | None = None) -> pd.DataFrame:
    """A window day's feature rows (its hash verified). With separate labels, the target holds the labels
    that had arrived by the window's ``labels_as_of`` (refused if the labels changed since selection).
    Without a window: the published day as it is (labels from the features only)."""
    expected = window.content_hashes.get(ds.isoformat()) if window is not None else None
    if spec.labels is None:
        return read_features(spec, ds, expected, columns)
    if window is None:
        raise ValueError(f"{spec.name} has a separate label source: read its days through a training window")
    from evergreen.outcomes import ARRIVED, label_book

    if window.labels_as_of is None:
        raise DataQualityError(f"{spec.name} window {window.start}..{window.as_of} was selected without labels")
    book = label_book(spec, window.labels_as_of, since=window.start)
    if book.digest != window.labels_digest:
        raise DataQualityError(f"{spec.name}: the labels known as of {window.labels_as_of} changed since the window "
                               "was selected (a label file was published late); rerun the training")
    wanted = None if columns is None else list(dict.fromkeys([*spec.label_keys, *columns]))
    frame, _ = book.attach(read_features(spec, ds, expected, wanted), ds)
    return frame.drop(columns=[ARRIVED])


def load_day(spec: PipelineSpec, ds: dt.date, window: TrainingWindow | None = None) -> pd.DataFrame:
    """One window day's labelled rows with the columns training needs, file hashes verified against the
    window (if given), capped if configured."""
    frame = add_time_features(read_window_day(spec, window, ds), spec, overwrite=False)
    wanted = training_columns(spec)
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        raise DataQualityError(f"{spec.name} ds={ds} lacks columns {absent}")
    frame = labelled(spec, frame[wanted])
    if spec.window.max_rows_per_day:
        frame = cap_rows(frame, spec.entity_keys, spec.window.max_rows_per_day)
    return sort_canonical(frame, spec)


def load_window_frames(spec: PipelineSpec, window: TrainingWindow) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, holdout) frames of the window's partitions, verified against its hashes.

    Holds the whole window in memory: training streams it instead (see ``training.streaming``).
    """

    def load(days: list[dt.date]) -> pd.DataFrame:
        frames = [load_day(spec, ds, window) for ds in days]
        return pd.concat(frames, ignore_index=True)

    return load(window.train_days), load(window.validation_days), load(window.holdout_days)


def read_features(spec: PipelineSpec, ds: dt.date, expected_sha: str | None = None,
                  columns: list[str] | None = None) -> pd.DataFrame:
    """A published feature partition (hashes verified; refused if republished since ``expected_sha``)."""
    directory = storage.partition_dir(layout.FEATURES, spec.name, ds)
    return storage.read_partition(directory, columns, expected_sha256=expected_sha)


def target_values(frame: pd.DataFrame, spec: PipelineSpec) -> np.ndarray:
    """The target as float64, refusing missing values (and non-0/1 values for a binary target)."""
    y = pd.to_numeric(frame[spec.target.name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    if np.isnan(y).any():
        raise DataQualityError(f"{spec.name}: target {spec.target.name!r} has missing values")
    if spec.task_type == TaskType.BINARY_CLASSIFICATION and not np.isin(y, [0.0, 1.0]).all():
        raise DataQualityError(f"{spec.name}: binary target {spec.target.name!r} has values other than 0/1")
    return y
