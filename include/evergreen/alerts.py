"""Alerts: what happened, to which spec, why, and where to look; routed by the spec, sent once.

An :class:`Alert` is built where the event happens (a failed task, a drift report, a decision). The spec's
``alerts.routes`` say which channels get which events (:func:`routes_for`). Each (event, partition) is
sent once per route: the first sender claims ``models/<spec>/alerts/<route>/<event>/<partition>.json``
with an exclusive create, so a retried task, a rerun or a second scheduler does not repeat it; a failed
delivery releases the claim and raises, so the retry sends it. Delivery itself is Airflow's (notifiers
on Airflow connections, :mod:`evergreen.notifiers`); this module knows nothing of Airflow.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from evergreen import layout, storage
from evergreen.spec import AlertRoute, PipelineSpec

DECISION_EVENTS = frozenset({"promoted", "registered", "rejected", "rolled_back"})  # decision kinds that alert


@dataclass(frozen=True)
class Alert:
    """One event of one spec. ``partition`` identifies the occurrence (a day, a run, a version): the
    dedup key with ``event``. ``link`` points at the run or the report."""

    spec: str
    event: str
    partition: str
    reason: str
    link: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"[evergreen] {self.spec}: {self.event.replace('_', ' ')} ({self.partition})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "subject": self.subject}

    def to_html(self) -> str:
        rows = "".join(f"<tr><th align='left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in sorted(self.details.items()))
        link = f"<p><a href='{html.escape(self.link)}'>{html.escape(self.link)}</a></p>" if self.link else ""
        return (f"<h3>{html.escape(self.subject)}</h3><p>{html.escape(self.reason)}</p>{link}"
                f"<table>{rows}</table>")


def routes_for(spec: PipelineSpec, event: str) -> list[AlertRoute]:
    """The spec's routes that want ``event``."""
    return [route for route in spec.alerts.routes if event in route.events]


def route_name(route: AlertRoute) -> str:
    return f"{route.channel}-{_safe(route.conn_id)}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "none"


def ledger_key(alert: Alert, route: AlertRoute) -> str:
    return (f"{layout.alerts(alert.spec)}/{route_name(route)}/{_safe(alert.event)}/"
            f"{_safe(alert.partition)}.json")


def send(spec: PipelineSpec, alert: Alert, deliver: Callable[[AlertRoute, Alert], None]) -> list[str]:
    """Send ``alert`` on every route that wants it, once per (route, event, partition); returns the
    routes that sent it now (the others had sent it already). ``deliver`` raises on failure: the claim is
    released, so a retry sends it again."""
    sent = []
    for route in routes_for(spec, alert.event):
        claim = storage.at(ledger_key(alert, route))
        body = {**alert.to_dict(), "route": route_name(route)}
        if not storage.create_exclusive(claim, storage.canonical_json(body)):
            continue
        try:
            deliver(route, alert)
        except BaseException:
            claim.unlink(missing_ok=True)
            raise
        sent.append(route_name(route))
    return sent


def sent_alerts(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Every alert recorded as sent for ``spec`` (all routes), in key order."""
    root = storage.at(layout.alerts(spec.name))
    if not root.exists():
        return []
    return [storage.read_json(p) for p in sorted(root.rglob("*.json"), key=str)]


# ------------------------------------------------------------------------------------ event builders


def decision_alert(spec: PipelineSpec, decision: Mapping[str, Any], link: str) -> Alert | None:
    """The alert of a registry decision (promoted, below the bar, registered, rejected, rolled back)."""
    event = str(decision.get("kind"))
    if event not in DECISION_EVENTS:  # dry runs change nothing; a shadowing challenger is not a decision yet
        return None
    if event == "promoted" and decision.get("below_bar"):
        event = "promoted_below_bar"
    gates = decision.get("gates") or {}
    partition = str(decision.get("version") or decision.get("run_id") or decision.get("decision_file"))
    reasons = "; ".join(decision.get("reasons") or []) or {
        "promoted": f"beats champion {decision.get('champion_before')} on the same holdout"}.get(event, event)
    return Alert(spec=spec.name, event=event, partition=partition, reason=reasons, link=link, details={
        "version": decision.get("version"), "run_id": decision.get("run_id"),
        "candidate": decision.get("candidate"), "champion_before": decision.get("champion_before"),
        "champion_after": decision.get("champion_after"), "primary_metric": gates.get("primary_metric"),
        "challenger": gates.get("challenger"), "champion": gates.get("champion"), "actor": decision.get("actor"),
    })


def drift_alert(spec: PipelineSpec, report: Mapping[str, Any], link: str) -> Alert:
    """A drifted day's report."""
    return Alert(spec=spec.name, event="drift_detected", partition=str(report["ds"]),
                 reason="; ".join(report.get("reasons") or []) or "drift detected", link=link,
                 details={"report": report.get("key"), "champion_version": report.get("champion_version")})


def trigger_alert(spec: PipelineSpec, trigger: Mapping[str, Any], link: str) -> Alert:
    return Alert(spec=spec.name, event="retrain_triggered", partition=str(trigger["run_id"]),
                 reason=(f"{trigger['conf'].get('reason', 'drift')} report {trigger['conf'].get('drift_report')} "
                         f"triggers {trigger['dag_id']}"),
                 link=link, details={"as_of": trigger["conf"].get("as_of"), "run_id": trigger["run_id"]})


def stale_champion_alert(spec: PipelineSpec, *, decisions: list[Mapping[str, Any]], reports: list[Mapping[str, Any]],
                         link: str) -> Alert | None:
    """``champion_stale`` when the newest drift reports keep saying drift (every report of the last
    ``alerts.stale_champion_days`` days of data, at least two) and no promotion happened since the first of
    them. Judged in data time: report days and decision times, never the wall clock."""
    if len(reports) < 2:
        return None
    newest = dt.date.fromisoformat(str(reports[-1]["ds"]))
    since = newest - dt.timedelta(days=spec.alerts.stale_champion_days - 1)
    recent = [r for r in reports if dt.date.fromisoformat(str(r["ds"])) >= since]
    first_day = dt.date.fromisoformat(str(reports[0]["ds"]))
    if first_day > since or len(recent) < 2 or not all(r["drift_detected"] for r in recent):
        return None  # history shorter than the stale period, or a quiet day within it
    promoted = [d for d in decisions if d.get("kind") in ("promoted", "rolled_back")
                and dt.datetime.fromisoformat(str(d["decided_at"])).date() >= since]
    if promoted:
        return None
    return Alert(spec=spec.name, event="champion_stale", partition=newest.isoformat(),
                 reason=(f"drift reported on every one of the {len(recent)} reports since {since} and no promotion "
                         f"since then ({spec.alerts.stale_champion_days} days)"),
                 link=link, details={"since": since.isoformat(), "reports": len(recent),
                                     "champion_version": reports[-1].get("champion_version")})


def failure_alert(spec: PipelineSpec, *, dag_id: str, task_id: str, run_id: str, occurrence: str,
                  error: BaseException | None, data_quality: bool, link: str) -> Alert:
    """A task that failed for good (retries exhausted or none allowed). ``occurrence`` is the run's day
    (``ds=...``) where it has one, so a rerun failing on the same day is not told again."""
    event = "data_quality_failed" if data_quality else "task_failed"
    reason = f"{type(error).__name__}: {error}" if error is not None else "task failed"
    return Alert(spec=spec.name, event=event, partition=f"{dag_id}.{task_id}.{occurrence}", reason=reason[:2000],
                 link=link, details={"dag_id": dag_id, "task_id": task_id, "run_id": run_id})


def late_data_alert(spec: PipelineSpec, *, dag_id: str, run_id: str, deadline: str, link: str) -> Alert:
    return Alert(spec=spec.name, event="data_late", partition=f"{dag_id}.{run_id}",
                 reason=f"the ETL run {run_id} has not finished by its deadline ({deadline})", link=link,
                 details={"dag_id": dag_id, "run_id": run_id, "deadline": deadline})
