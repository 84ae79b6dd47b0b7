"""Every storage key Evergreen writes or reads, relative to the storage root (``storage.at`` resolves one).

::

    features/<spec>/ds=YYYY-MM-DD/part-<sha>.parquet + _manifest.json    validated feature partitions
    quarantine/<spec>/ds=YYYY-MM-DD/rows.parquet | raw/ + validation.json rejected raw data and its report
    predictions/<spec>/ds=YYYY-MM-DD/part-<sha>.parquet + _manifest.json batch scores (champion, shadow)
    predictions/online/<spec>/ds=YYYY-MM-DD/part-<UTC time>-<sha>.parquet online scores (`evergreen serve`), appended
    labels/<spec>/ds=YYYY-MM-DD/part-<sha>.parquet + _manifest.json      labels by arrival day (late labels)
    outcomes/<spec>/ds=YYYY-MM-DD/part-<sha>.parquet + _manifest.json    predictions joined to their labels
    reports/performance/<spec>/report.json + report.html                  realized performance per day and model
    reports/drift/<spec>/ds=YYYY-MM-DD/report.json + report.html          one drift report per partition
    reports/backtest/<spec>/<start>_<end>/backtest.json + backtest.html    a backtest of the DAG
    models/<spec>/decisions/<UTC time>-<kind>-<id>.json                   promotion / rollback decisions
    models/<spec>/decisions/<run id>/gates.json                           the gate report of a candidate
    models/<spec>/drift_triggers/<ds>-<report sha[:12]>.json              the retrain trigger ledger
    models/<spec>/registry.lock                                           held while aliases change
    models/<spec>/alerts/<route>/<event>/<partition>.json                 each alert, sent once per route

Pure string building: no I/O, no Airflow. ``ds`` is always a ``datetime.date``.
"""

from __future__ import annotations

import datetime as dt

FEATURES = "features"
QUARANTINE = "quarantine"
PREDICTIONS = "predictions"
ONLINE_PREDICTIONS = "predictions/online"  # append-only parts, no manifest (storage.append_part)
LABELS = "labels"
OUTCOMES = "outcomes"
PERFORMANCE_REPORTS = "reports/performance"
DRIFT_REPORTS = "reports/drift"
BACKTESTS = "reports/backtest"
MODELS = "models"
MANIFEST = "_manifest.json"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def partition_key(ds: dt.date) -> str:
    """``ds=YYYY-MM-DD``: the folder name of a day."""
    return f"ds={ds.isoformat()}"


def parse_partition_key(name: str) -> dt.date | None:
    """The day of a ``ds=YYYY-MM-DD`` folder name; None for anything else."""
    if not name.startswith("ds="):
        return None
    try:
        ds = dt.date.fromisoformat(name[3:])
    except ValueError:
        return None
    # fromisoformat also reads 20261007 and 2026-W41-3: only the name partition_key writes is a day.
    return ds if partition_key(ds) == name else None


def zone(zone_name: str, spec_name: str) -> str:
    """``<zone>/<spec>``: the folder holding a spec's partitions of a zone."""
    return f"{zone_name}/{spec_name}"


def partition(zone_name: str, spec_name: str, ds: dt.date) -> str:
    """``<zone>/<spec>/ds=YYYY-MM-DD``."""
    return f"{zone(zone_name, spec_name)}/{partition_key(ds)}"


def drift_report(spec_name: str, ds: dt.date) -> str:
    """The day's drift report (JSON; the HTML page sits beside it)."""
    return f"{partition(DRIFT_REPORTS, spec_name, ds)}/{REPORT_JSON}"


def drift_report_html(spec_name: str, ds: dt.date) -> str:
    return f"{partition(DRIFT_REPORTS, spec_name, ds)}/{REPORT_HTML}"


def performance_report(spec_name: str) -> str:
    """The realized-performance report (JSON; the HTML page sits beside it)."""
    return f"{PERFORMANCE_REPORTS}/{spec_name}/{REPORT_JSON}"


def performance_report_html(spec_name: str) -> str:
    return f"{PERFORMANCE_REPORTS}/{spec_name}/{REPORT_HTML}"


def label_quarantine(spec_name: str, ds: dt.date) -> str:
    """Rejected label files of an arrival day and why."""
    return f"{QUARANTINE}/{spec_name}/labels/{partition_key(ds)}"


def backtest_dir(spec_name: str, start: dt.date, end: dt.date) -> str:
    """The folder of the backtest of ``start..end`` (``backtest.json`` and ``backtest.html``)."""
    return f"{BACKTESTS}/{spec_name}/{start.isoformat()}_{end.isoformat()}"


def decisions(spec_name: str) -> str:
    return f"{MODELS}/{spec_name}/decisions"


def gate_report(spec_name: str, run_id: str) -> str:
    return f"{decisions(spec_name)}/{run_id}/gates.json"


def registry_lock(spec_name: str) -> str:
    """Held while a promotion or rollback changes the registry aliases (see ``registry.registry_lock``)."""
    return f"{MODELS}/{spec_name}/registry.lock"


def alerts(spec_name: str) -> str:
    """The sent-alert ledger (one file per route, event and partition: the dedup record)."""
    return f"{MODELS}/{spec_name}/alerts"


def trigger_ledger(spec_name: str) -> str:
    return f"{MODELS}/{spec_name}/drift_triggers"


def trigger_entry(spec_name: str, ds: dt.date, report_sha256: str) -> str:
    """One ledger entry per (day, report content): the same report is decided once."""
    return f"{trigger_ledger(spec_name)}/{ds.isoformat()}-{report_sha256[:12]}.json"
