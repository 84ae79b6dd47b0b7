"""Outcomes: late labels joined to what was predicted, and the realized performance of every model.

A spec with ``labels:`` gets its labels from their own source, one file per *arrival* day. Three steps,
each a transaction keyed by a day:

* :func:`ingest_labels` validates the label files of the last ``max_delay_days`` arrival days and
  publishes each as ``labels/<spec>/ds=<arrival day>/`` (the file's rows, keys as text, the label as a
  number; a day whose source files did not change is left alone);
* :class:`LabelBook` is what is known as of a day A: every label that arrived by A, one per key. **The
  rule**: the first label to arrive for a key wins (ties: file order); a later identical one is a
  *duplicate*, a later different one is *contradictory*; both are counted and ignored. A label that
  arrived more than ``max_delay_days`` after the prediction day is *late*: counted, never used. With
  ``labels.absent_label`` (a feed of positives only, such as chargebacks) a day's rows without a label
  take that label once the day has *matured* (its delay window closed); before, none of its labels
  count, since the positives alone are a biased sample. Training
  as of A joins the book as of A, so no label from after A can leak into a model;
* :func:`run_outcomes` joins the stored predictions of every day still inside the delay window (and of
  the day whose window closed the day before: its last rewrite, counting labels one day late) to the
  book as of A into ``outcomes/<spec>/ds=<prediction day>/`` (predictions, label, arrival day, model
  versions: champion and shadow challenger), and rewrites the realized-performance report
  (``reports/performance/<spec>/``): per prediction day and model, the spec's metrics on the labelled
  rows and the label coverage.

The day of a prediction is its partition's ``ds``; with ``labels.event_time`` a label also names its
event's day, for keys that repeat across days.

Online predictions (``evergreen serve``'s log, ``predictions/online/<spec>/ds=<event day>/``) are joined
by the same rules into the same outcome partitions, their rows marked ``source`` = ``online`` (and the
batch rows ``batch``; a day without online predictions is written exactly as before, without the column).
The manifest's ``online`` holds their own per-version metrics; ``models`` and the realized metrics stay the
batch scoring's, so an event scored both online and in batch is not counted twice.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evergreen import layout, storage
from evergreen.errors import DataQualityError
from evergreen.spec import PipelineSpec, TaskType

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

LABEL = "label"
ARRIVED = "label_arrived"
EVENT_DAY = "event_day"
ROW = "label_row"  # position in the arrival day's files: the tie-break of "first to arrive wins"
SOURCE = "source"  # of an outcome row, on days with online predictions: BATCH or ONLINE
BATCH = "batch"  # scored by the drift monitor (monitoring.score_partition)
ONLINE = "online"  # served over HTTP (evergreen.serving), logged with its request
ONLINE_COLUMNS = ("request_id", "request_row", "served_at")  # what an online outcome row adds


def _require_labels(spec: PipelineSpec) -> None:
    if spec.labels is None:
        raise ValueError(f"spec {spec.name} has no labels: source (its labels come with the features)")


# ------------------------------------------------------------------------------------------ ingestion


def label_values(spec: PipelineSpec, raw: pd.Series) -> pd.Series:
    """Raw labels as float64 (NaN where unreadable): 0/1 through the target's ``positive_label`` mapping
    for a binary target, numbers for a regression."""
    import pandas as pd

    from evergreen.etl.labels import binary_labels

    target = spec.target
    if spec.task_type == TaskType.BINARY_CLASSIFICATION and target.positive_label is not None:
        values = binary_labels(raw, target.positive_label, target.negative_label)
    else:
        values = pd.to_numeric(raw, errors="coerce")
    return pd.Series(values.astype("Float64").to_numpy(dtype="float64", na_value=float("nan")), index=raw.index)


def _label_range(spec: PipelineSpec) -> str:
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        return "{0, 1}" if spec.target.positive_label is None else "the target's labels"
    return f"[{spec.target.min}, {spec.target.max}]"


def _out_of_range(spec: PipelineSpec, values: pd.Series) -> pd.Series:
    """Readable labels a target cannot hold: not 0/1 for a binary one, outside min/max for a regression."""
    known = values.notna()
    if spec.task_type == TaskType.BINARY_CLASSIFICATION:
        return known & ~values.isin([0.0, 1.0])
    low = values < spec.target.min if spec.target.min is not None else False
    high = values > spec.target.max if spec.target.max is not None else False
    return known & (low | high)


def _event_days(spec: PipelineSpec, raw: pd.Series) -> pd.Series:
    """The local day (spec timezone) of each event time; naive times are local already."""
    import pandas as pd

    from evergreen.etl.ingest import localize_naive

    parsed = pd.to_datetime(raw, errors="coerce", format="mixed")
    if getattr(parsed.dt, "tz", None) is None:
        parsed = localize_naive(parsed, spec.schedule.timezone)[0]
    return parsed.dt.tz_convert(spec.schedule.timezone).dt.date.map(lambda d: d.isoformat() if pd.notna(d) else None)


def read_label_day(spec: PipelineSpec, arrived: dt.date) -> tuple[pd.DataFrame, list[dict[str, Any]]] | None:
    """The labels that arrived on ``arrived`` (validated), and their source files; None when no file
    arrived that day. Bad files raise DataQualityError (quarantined with the reason)."""
    import numpy as np
    import pandas as pd

    from evergreen.etl.ingest import read_source_file, source_locations

    _require_labels(spec)
    cfg = spec.labels
    paths = source_locations(cfg.source, arrived)
    if not paths:
        return None
    frames, sources = [], []
    for path in paths:
        data = path.read_bytes()
        sources.append({"uri": storage.relative(path), "sha256": storage.sha256_bytes(data), "bytes": len(data)})
        frames.append(read_source_file(cfg.source, path, data))
    raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    keys, column = spec.label_keys, spec.label_column
    wanted = [*keys, column, *([cfg.event_time] if cfg.event_time else [])]
    problems = [f"missing columns {sorted(set(wanted) - set(raw.columns))}"] if set(wanted) - set(raw.columns) else []
    if not problems:
        out = pd.DataFrame({key: raw[key].astype("str").where(raw[key].notna(), None) for key in keys})
        out[LABEL] = label_values(spec, raw[column])
        if cfg.event_time:
            out[EVENT_DAY] = _event_days(spec, raw[cfg.event_time])
        out[ROW] = np.arange(len(out), dtype="int64")
        for name, bad in ((f"missing key {keys}", out[keys].isna().any(axis=1)),
                          (f"unreadable label {column!r}", out[LABEL].isna() & raw[column].notna()),
                          (f"missing label {column!r}", raw[column].isna()),
                          (f"label {column!r} outside {_label_range(spec)}", _out_of_range(spec, out[LABEL])),
                          *(((f"unreadable event time {cfg.event_time!r}", out[EVENT_DAY].isna()),) if cfg.event_time else ())):
            if bad.any():
                problems.append(f"{int(bad.sum())} rows with a {name} (first at row {int(np.flatnonzero(bad)[0])})")
    if problems:
        report = {"spec": spec.name, "arrived": arrived.isoformat(), "success": False, "failures": problems,
                  "sources": sources}
        where = storage.at(layout.label_quarantine(spec.name, arrived))
        storage.write_json_atomic(where / "validation.json", report)
        raise DataQualityError(f"labels of {spec.name} arrived {arrived}: " + "; ".join(problems)
                               + f"\nquarantined the report to {where}")
    return out, sources


def publish_label_day(spec: PipelineSpec, arrived: dt.date) -> dict[str, Any]:
    """Validate and publish the labels of one arrival day (unchanged sources: the existing partition). A
    day without a file is published empty: the record that it was looked at (see :meth:`LabelBook.matured`)."""
    directory = storage.partition_dir(layout.LABELS, spec.name, arrived)
    read = read_label_day(spec, arrived)
    frame, sources = read if read is not None else (_no_labels(spec), [])
    existing = storage.read_manifest(directory)
    if existing and existing.get("sources") == sources:
        return {"ds": arrived.isoformat(), "rows": existing["rows"], "content_sha256": existing["content_sha256"],
                "written": False}
    data = storage.frame_to_parquet_bytes(frame)
    name = storage.stage_data_file(directory, data)
    manifest = {"spec": spec.name, "ds": arrived.isoformat(), "rows": len(frame),
                "content_sha256": storage.sha256_bytes(data),
                "files": [{"name": name, "sha256": storage.sha256_bytes(data), "rows": len(frame), "bytes": len(data)}],
                "sources": sources}
    storage.publish(directory, manifest)
    log.info("published %d labels of %s that arrived %s", len(frame), spec.name, arrived)
    return {"ds": arrived.isoformat(), "rows": len(frame), "content_sha256": manifest["content_sha256"],
            "written": True}


def _no_labels(spec: PipelineSpec) -> pd.DataFrame:
    import pandas as pd

    columns = {key: pd.Series(dtype="str") for key in spec.label_keys}
    columns[LABEL] = pd.Series(dtype="float64")
    if spec.labels.event_time:
        columns[EVENT_DAY] = pd.Series(dtype="str")
    columns[ROW] = pd.Series(dtype="int64")
    return pd.DataFrame(columns)


def ingest_labels(spec: PipelineSpec, through: dt.date) -> list[dict[str, Any]]:
    """Publish the label files of the arrival days ``through - max_delay_days .. through`` (a file that
    landed late for an earlier day is picked up by any run whose delay window still covers that day), and
    of every arrival day since the newest published one: after an outage or on the first run (from the
    spec's ``start_date``) no arrival day is skipped."""
    _require_labels(spec)
    open_from = through - dt.timedelta(days=spec.labels.max_delay_days)
    published = [day for day in storage.list_partitions(layout.LABELS, spec.name) if day <= through]
    first = min(open_from, max(published) + dt.timedelta(days=1) if published else spec.schedule.start_date)
    days = [first + dt.timedelta(days=i) for i in range((through - first).days + 1)]
    return [publish_label_day(spec, day) for day in days]


# ------------------------------------------------------------------------------------------ label book


@dataclass
class LabelBook:
    """Every label known as of ``as_of`` (arrived on or before it, and not before ``since``), one per key."""

    spec: PipelineSpec
    as_of: dt.date
    table: pd.DataFrame
    digest: str
    duplicates: int = 0
    contradictory: int = 0
    arrival_days: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, spec: PipelineSpec, as_of: dt.date, since: dt.date | None = None) -> LabelBook:
        return cls.from_partitions(spec, as_of, published_labels(spec, as_of, since))

    @classmethod
    def from_partitions(cls, spec: PipelineSpec, as_of: dt.date, partitions: Mapping[dt.date, tuple[Any, str]]
                        ) -> LabelBook:
        import pandas as pd

        keys = join_keys(spec)
        frames = [storage.read_partition(path, expected_sha256=sha).assign(**{ARRIVED: arrived.isoformat()})
                  for arrived, (path, sha) in sorted(partitions.items())]
        columns = [*keys, LABEL, ARRIVED, ROW]
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        table = table.sort_values([ARRIVED, ROW], kind="stable")
        first = ~table.duplicated(keys, keep="first")
        repeats = table[~first][[*keys, LABEL]].merge(table[first][[*keys, LABEL]], on=keys, suffixes=("", "_first"))
        same = int((repeats[LABEL] == repeats[f"{LABEL}_first"]).sum())
        return cls(spec=spec, as_of=as_of, table=table[first].reset_index(drop=True)[columns],
                   digest=labels_digest(partitions), duplicates=same, contradictory=len(repeats) - same,
                   arrival_days=[d.isoformat() for d in sorted(partitions)])

    def matured(self, ds: dt.date) -> bool:
        """Prediction day ``ds``'s delay window has closed by the book's day and every arrival day in it was
        ingested (an arrival day without a file is published empty): all its labels are known."""
        last = ds + dt.timedelta(days=self.spec.labels.max_delay_days)
        ingested = set(self.arrival_days)
        return last <= self.as_of and all((ds + dt.timedelta(days=i)).isoformat() in ingested
                                          for i in range((last - ds).days + 1))

    def attach(self, frame: pd.DataFrame, ds: dt.date) -> tuple[pd.DataFrame, dict[str, int]]:
        """``frame`` (rows of prediction day ``ds``) with the target filled from the labels that arrived
        within the delay (NaN otherwise) and ``label_arrived``; and the counts (labelled, late)."""
        spec = self.spec
        keys = spec.label_keys
        deadline = (ds + dt.timedelta(days=spec.labels.max_delay_days)).isoformat()
        table = self.table
        if spec.labels.event_time:
            table = table[table[EVENT_DAY] == ds.isoformat()]
        joined = frame.drop(columns=[c for c in (spec.target.name, ARRIVED) if c in frame.columns]).merge(
            table[[*keys, LABEL, ARRIVED]], on=keys, how="left", validate="many_to_one", sort=False)
        late = (joined[ARRIVED].notna() & (joined[ARRIVED] > deadline)).to_numpy()
        joined.loc[late, LABEL] = float("nan")
        joined.loc[late, ARRIVED] = None
        absent = spec.absent_label_value
        if absent is not None:
            if self.matured(ds):  # no label by the deadline: the absent label
                joined[LABEL] = joined[LABEL].fillna(absent)
            else:  # the positives alone are not a sample of the day: nothing counts yet
                joined[LABEL] = float("nan")
                joined[ARRIVED] = None
        joined = joined.rename(columns={LABEL: spec.target.name})
        joined.index = frame.index
        counts = {"rows": len(frame), "labelled": int(joined[spec.target.name].notna().sum()), "late": int(late.sum())}
        return joined, counts


def join_keys(spec: PipelineSpec) -> list[str]:
    """The columns a label is unique on: its keys, and its event day when labels name one."""
    return [*spec.label_keys, *([EVENT_DAY] if spec.labels is not None and spec.labels.event_time else [])]


def published_labels(spec: PipelineSpec, as_of: dt.date, since: dt.date | None = None
                     ) -> dict[dt.date, tuple[Any, str]]:
    """The published label partitions that arrived in ``since..as_of``: ``{day: (folder, content sha)}``."""
    out = {}
    for arrived, path in storage.list_partitions(layout.LABELS, spec.name).items():
        if arrived > as_of or (since is not None and arrived < since):
            continue
        manifest = storage.read_manifest(path)
        if manifest is not None:
            out[arrived] = (path, str(manifest["content_sha256"]))
    return out


def labels_digest(partitions: Mapping[dt.date, tuple[Any, str]]) -> str:
    return storage.data_digest({f"labels@{day.isoformat()}": sha for day, (_, sha) in partitions.items()})


_BOOKS: dict[tuple[str, str, str, str], LabelBook] = {}


def label_book(spec: PipelineSpec, as_of: dt.date, since: dt.date | None = None) -> LabelBook:
    """:meth:`LabelBook.load`, kept for the process (a training reads one book for all its days); the
    key holds the content of what is published, so a changed label partition makes a new book."""
    partitions = published_labels(spec, as_of, since)
    key = (spec.name, str(storage.storage_root()), f"{as_of}/{since}", labels_digest(partitions))
    if key not in _BOOKS:
        if len(_BOOKS) > 8:
            _BOOKS.clear()
        _BOOKS[key] = LabelBook.from_partitions(spec, as_of, partitions)
    return _BOOKS[key]


# ------------------------------------------------------------------------------------------ outcomes


def join_outcomes(spec: PipelineSpec, ds: dt.date, book: LabelBook) -> dict[str, Any] | None:
    """Write ``outcomes/<spec>/ds=<ds>`` from the day's predictions (batch and online) and ``book``; None
    without predictions."""
    from evergreen.evaluation import json_safe

    pred_dir = storage.partition_dir(layout.PREDICTIONS, spec.name, ds)
    pred_manifest = storage.read_manifest(pred_dir)
    online = online_predictions(spec, ds)
    if pred_manifest is None and online is None:
        return None
    batch_sha = pred_manifest["content_sha256"] if pred_manifest is not None else None
    online_digest = online[1] if online is not None else None
    out_dir = storage.partition_dir(layout.OUTCOMES, spec.name, ds)
    existing = storage.read_manifest(out_dir)
    if (existing and existing.get("predictions_content_sha256") == batch_sha
            and existing.get("labels_digest") == book.digest and existing.get("online_parts_digest") == online_digest):
        return _outcome_reference(out_dir, existing)
    frames, models, counts = [], {}, {"labelled": 0, "late": 0}
    if pred_manifest is not None:
        predictions = storage.read_partition(pred_dir, expected_sha256=batch_sha)
        joined, counts = book.attach(predictions, ds)
        models = {role: _realized(spec, joined[(joined["model_role"] == role)
                                                & (joined["model_version"] == str(version))], str(version))
                  for role, version in (pred_manifest.get("models") or {}).items()}
        frames.append(joined)
    extra: dict[str, Any] = {}
    if online is not None:
        served, served_counts = book.attach(online[0], ds)
        versions = {v: _realized(spec, served[served["model_version"] == v], v)
                    for v in sorted(served["model_version"].unique())}
        extra = {"online_parts_digest": online_digest,
                 "online": {"rows": len(served), "labelled": served_counts["labelled"], "late": served_counts["late"],
                            "parts": online[2], "versions": versions}}
        frames = [*(f.assign(**{SOURCE: BATCH}) for f in frames), served.assign(**{SOURCE: ONLINE})]
    if len(frames) > 1:
        import pandas as pd

        joined = pd.concat(frames, ignore_index=True)
    else:
        joined = frames[0]
    data = storage.frame_to_parquet_bytes(joined.reset_index(drop=True))
    name = storage.stage_data_file(out_dir, data)
    roles = len(models) or 1
    manifest = json_safe({
        "spec": spec.name, "ds": ds.isoformat(), "rows": len(joined),
        "content_sha256": storage.sha256_bytes(data),
        "files": [{"name": name, "sha256": storage.sha256_bytes(data), "rows": len(joined), "bytes": len(data)}],
        "labels_as_of": book.as_of.isoformat(), "labels_digest": book.digest,
        "predictions_content_sha256": batch_sha,
        "max_delay_days": spec.labels.max_delay_days,
        # Per row of the day, not per prediction (each row is scored once per serving model).
        "labelled_rows": counts["labelled"] // roles, "late_labels": counts["late"] // roles,
        "models": models,
        **extra,
    })
    storage.publish(out_dir, manifest)
    return _outcome_reference(out_dir, manifest)


def _realized(spec: PipelineSpec, rows: pd.DataFrame, version: str) -> dict[str, Any]:
    """One model's outcome on some joined rows: rows, labelled rows, coverage, the spec's metrics on them."""
    import numpy as np

    from evergreen.evaluation import compute_metrics

    labelled = rows[rows[spec.target.name].notna()]
    y = labelled[spec.target.name].to_numpy(dtype="float64")
    metrics = compute_metrics(spec.task_type, y, labelled["prediction"].to_numpy(dtype="float64")) if len(y) else {}
    return {"version": version, "rows": len(rows), "labelled": len(labelled),
            "coverage": len(labelled) / len(rows) if len(rows) else 0.0, "metrics": metrics,
            "classes": sorted({int(v) for v in np.unique(y)}) if spec.task_type == TaskType.BINARY_CLASSIFICATION else None}


def online_predictions(spec: PipelineSpec, ds: dt.date) -> tuple[pd.DataFrame, str, int] | None:
    """The online predictions logged for event day ``ds`` (the columns a batch prediction has, and
    :data:`ONLINE_COLUMNS`), a digest of the part files they came from, and how many; None without any."""
    found = storage.read_parts(storage.partition_dir(layout.ONLINE_PREDICTIONS, spec.name, ds))
    if found is None:
        return None
    frame, names = found
    rows = frame[[*spec.entity_keys, spec.timestamp_column, "model_version", "prediction", *ONLINE_COLUMNS]].copy()
    # Served by the champion alias; ``source`` tells these rows from the batch champion's.
    rows.insert(len(spec.entity_keys) + 1, "model_role", "champion")
    rows["request_row"] = rows["request_row"].astype("Int64")  # stays an integer beside the batch rows
    return rows, storage.sha256_bytes("\n".join(names).encode()), len(names)


def batch_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """An outcome partition's batch-scored rows (all of them on a day without online predictions)."""
    return frame[frame[SOURCE] == BATCH] if SOURCE in frame.columns else frame


def _outcome_reference(directory: Any, manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {"path": str(directory), "ds": manifest["ds"], "labels_as_of": manifest["labels_as_of"],
            "labelled_rows": manifest["labelled_rows"], "content_sha256": manifest["content_sha256"]}


def run_outcomes(spec: PipelineSpec, as_of: dt.date, *, ingest: bool = True) -> dict[str, Any]:
    """The outcomes step of day ``as_of``: ingest the labels (unless a step before did), join every
    prediction day inside the delay window, rewrite the performance report. Returns what was joined and
    the label counts."""
    _require_labels(spec)
    ingested = ingest_labels(spec, as_of) if ingest else []
    delay = spec.labels.max_delay_days
    # The days inside the delay window, and the one whose window closed yesterday: its last rewrite
    # counts the labels that arrived the day after its deadline as late.
    first = as_of - dt.timedelta(days=delay + 1)
    # Labels for day P arrive from P on: a book from the first of those days holds them all.
    book = LabelBook.load(spec, as_of, since=first)
    joined = []
    for offset in range(delay + 2):
        reference = join_outcomes(spec, first + dt.timedelta(days=offset), book)
        if reference is not None:
            joined.append(reference)
    report = write_performance_report(spec)
    return {"spec": spec.name, "as_of": as_of.isoformat(), "labels": ingested, "outcomes": joined,
            "duplicate_labels": book.duplicates, "contradictory_labels": book.contradictory,
            "report": report["key"]}


# ------------------------------------------------------------------------------------------ performance


def performance_days(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Per outcomes day: ``{ds, labels_as_of, labelled_rows, late_labels, models: {role: {...}}}``."""
    days = []
    for _, path in sorted(storage.list_partitions(layout.OUTCOMES, spec.name).items()):
        manifest = storage.read_manifest(path)
        if manifest is not None:
            days.append({k: manifest[k] for k in ("ds", "labels_as_of", "labelled_rows", "late_labels", "models")})
    return days


def realized_metric(spec: PipelineSpec, version: str, last_days: int) -> dict[str, Any] | None:
    """The primary metric of ``version`` pooled over the labelled rows of its last ``last_days``
    outcome days (as champion or challenger), or None without labelled rows."""
    import numpy as np

    from evergreen.evaluation import compute_metrics

    days = [d for d in performance_days(spec)
            if any(m["version"] == str(version) and m["labelled"] for m in d["models"].values())][-last_days:]
    if not days:
        return None
    ys, preds = [], []
    for day in days:
        frame = batch_rows(storage.read_partition(
            storage.partition_dir(layout.OUTCOMES, spec.name, dt.date.fromisoformat(day["ds"]))))
        rows = frame[(frame["model_version"] == str(version)) & frame[spec.target.name].notna()]
        ys.append(rows[spec.target.name].to_numpy(dtype="float64"))
        preds.append(rows["prediction"].to_numpy(dtype="float64"))
    y, pred = np.concatenate(ys), np.concatenate(preds)
    metric = compute_metrics(spec.task_type, y, pred).get(spec.primary_metric)
    return {"metric": spec.primary_metric, "value": metric, "rows": len(y), "days": [d["ds"] for d in days]}


def shadow_comparison(spec: PipelineSpec, champion: str, challenger: str, *, after: dt.date) -> dict[str, Any]:
    """Champion and shadow challenger on the same labelled rows of every outcome day after ``after`` (the
    challenger's last training day: earlier days are in its sample) that scored both: ``{days, rows,
    champion, challenger}`` (their primary metric, pooled over those rows)."""
    import numpy as np

    from evergreen.evaluation import compute_metrics

    keys, target = spec.label_keys, spec.target.name
    days, ys, champ, chall = [], [], [], []
    for ds, path in sorted(storage.list_partitions(layout.OUTCOMES, spec.name).items()):
        if ds <= after:
            continue
        manifest = storage.read_manifest(path)
        models = (manifest or {}).get("models") or {}
        if {m["version"] for m in models.values()} < {str(champion), str(challenger)}:
            continue
        frame = batch_rows(storage.read_partition(path, expected_sha256=manifest["content_sha256"]))
        frame = frame[frame[target].notna()]
        pair = frame[frame["model_version"] == str(champion)].merge(
            frame[frame["model_version"] == str(challenger)][[*keys, "prediction"]], on=keys, suffixes=("", "_shadow"))
        if pair.empty:
            continue
        days.append(ds.isoformat())
        ys.append(pair[target].to_numpy(dtype="float64"))
        champ.append(pair["prediction"].to_numpy(dtype="float64"))
        chall.append(pair["prediction_shadow"].to_numpy(dtype="float64"))
    if not days:
        return {"days": [], "rows": 0, "champion": None, "challenger": None}
    y = np.concatenate(ys)
    metric = spec.primary_metric
    return {"days": days, "rows": len(y), "metric": metric,
            "champion": compute_metrics(spec.task_type, y, np.concatenate(champ)).get(metric),
            "challenger": compute_metrics(spec.task_type, y, np.concatenate(chall)).get(metric)}


def write_performance_report(spec: PipelineSpec) -> dict[str, Any]:
    """``reports/performance/<spec>/report.json`` + ``report.html``: every outcomes day, each model."""
    days = performance_days(spec)
    report = {"spec": spec.name, "primary_metric": spec.primary_metric, "days": days}
    key = layout.performance_report(spec.name)
    storage.write_json_atomic(storage.at(key), report)
    storage.write_bytes_atomic(storage.at(layout.performance_report_html(spec.name)), render_html(report).encode())
    return {"key": key, "days": len(days)}


def render_html(report: Mapping[str, Any]) -> str:
    """The realized primary metric of champion and challenger per prediction day (a chart) and a table
    with label coverage. Plain SVG, no script."""
    from evergreen.charts import line_chart

    metric = report["primary_metric"]
    days = [d["ds"] for d in report["days"]]
    series = {role: [(d["models"].get(role) or {}).get("metrics", {}).get(metric) for d in report["days"]]
              for role in ("champion", "challenger")}
    chart = line_chart(days, {k: v for k, v in series.items() if any(x is not None for x in v)},
                       title=f"realized {metric} per prediction day") if days else "<p>No outcomes yet.</p>"
    rows = []
    for d in report["days"]:
        for role, m in sorted(d["models"].items()):
            value = m.get("metrics", {}).get(metric)
            rows.append(f"<tr><td>{html.escape(d['ds'])}</td><td>{html.escape(role)}</td><td>{html.escape(m['version'])}</td>"
                        f"<td>{m['labelled']} / {m['rows']} ({m['coverage']:.0%})</td>"
                        f"<td>{'n/a' if value is None else f'{value:.4f}'}</td><td>{html.escape(d['labels_as_of'])}</td></tr>")
    title = f"Realized performance of {report['spec']}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{chart}<table><tr><th>prediction day</th><th>model</th><th>version</th>"
            f"<th>labelled rows</th><th>{html.escape(metric)}</th><th>labels as of</th></tr>{''.join(rows)}</table>"
            "</body></html>\n")


def labelled_rows_by_day(spec: PipelineSpec, book: LabelBook, days: Mapping[dt.date, str]
                         ) -> dict[dt.date, tuple[int, set[str]]]:
    """For the training window: per feature day, the rows ``book`` labels and the classes seen."""
    from evergreen.training.window import read_features

    out = {}
    for ds, sha in days.items():
        keys = read_features(spec, ds, sha, list(spec.label_keys))
        joined, counts = book.attach(keys, ds)
        labels = joined[spec.target.name].dropna()
        classes = {str(int(v)) for v in labels.unique()} if spec.task_type == TaskType.BINARY_CLASSIFICATION else set()
        out[ds] = (counts["labelled"], classes)
    return out
