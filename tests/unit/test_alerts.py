"""Alerts: routing by event, once per (route, event, partition), a failed delivery retried, the alert
builders' fields, and the stale-champion rule in data time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from evergreen import alerts
from evergreen.spec import AlertRoute, PipelineSpec
from helpers import small_spec


def _spec(**alert_cfg: object) -> PipelineSpec:
    spec = small_spec("fraud")
    routes = [AlertRoute(channel="webhook", conn_id="hook"),
              AlertRoute(channel="email", conn_id="smtp", to=["ops@example.com"], events=["promoted", "rejected"])]
    return spec.model_copy(update={"alerts": spec.alerts.model_copy(update={"routes": routes, **alert_cfg})})


def test_routing_and_once_per_partition(storage_root: Path) -> None:
    spec = _spec()
    delivered: list[tuple[str, str, str]] = []

    def deliver(route: AlertRoute, alert: alerts.Alert) -> None:
        delivered.append((route.channel, alert.event, alert.partition))

    promoted = alerts.Alert(spec=spec.name, event="promoted", partition="3", reason="beats 2")
    drift = alerts.Alert(spec=spec.name, event="drift_detected", partition="2026-10-02", reason="psi")
    assert alerts.send(spec, promoted, deliver) == ["webhook-hook", "email-smtp"]
    assert alerts.send(spec, drift, deliver) == ["webhook-hook"]  # the email route does not want drift
    assert alerts.send(spec, promoted, deliver) == []  # a rerun: already sent on both routes
    assert delivered == [("webhook", "promoted", "3"), ("email", "promoted", "3"),
                         ("webhook", "drift_detected", "2026-10-02")]
    ledger = alerts.sent_alerts(spec)
    assert sorted((e["route"], e["event"], e["partition"]) for e in ledger) == [
        ("email-smtp", "promoted", "3"), ("webhook-hook", "drift_detected", "2026-10-02"),
        ("webhook-hook", "promoted", "3")]


def test_a_failed_delivery_is_sent_by_the_retry(storage_root: Path) -> None:
    spec = _spec()
    alert = alerts.Alert(spec=spec.name, event="drift_detected", partition="2026-10-02", reason="psi")
    calls = []

    def broken(route: AlertRoute, alert: alerts.Alert) -> None:
        calls.append(route.channel)
        raise ConnectionError("webhook down")

    with pytest.raises(ConnectionError):
        alerts.send(spec, alert, broken)
    assert alerts.sent_alerts(spec) == []  # the claim was released
    assert alerts.send(spec, alert, lambda route, alert: calls.append("ok")) == ["webhook-hook"]
    assert calls == ["webhook", "ok"]


def test_decision_alerts_name_event_reason_and_link() -> None:
    spec = _spec()
    decision = {"kind": "promoted", "below_bar": True, "version": "4", "run_id": "abc", "candidate": "baseline",
                "champion_before": "3", "champion_after": "4", "reasons": ["below the bar (absolute:roc_auc)"],
                "gates": {"primary_metric": "roc_auc", "challenger": 0.74, "champion": 0.70}}
    alert = alerts.decision_alert(spec, decision, "http://ui/dags/fraud_training/runs/r1")
    assert alert is not None
    assert (alert.event, alert.partition, alert.reason) == ("promoted_below_bar", "4", "below the bar (absolute:roc_auc)")
    assert alert.details["candidate"] == "baseline" and alert.details["challenger"] == 0.74
    assert alert.subject == "[evergreen] fraud: promoted below bar (4)"
    assert "http://ui/dags/fraud_training/runs/r1" in alert.to_html()
    assert alerts.decision_alert(spec, {**decision, "kind": "dry_run"}, "") is None
    rejected = alerts.decision_alert(spec, {"kind": "rejected", "run_id": "abc", "reasons": ["lift"]}, "")
    assert rejected is not None and (rejected.event, rejected.partition) == ("rejected", "abc")


def _reports(first: dt.date, drifted: list[bool]) -> list[dict[str, object]]:
    return [{"ds": (first + dt.timedelta(days=i)).isoformat(), "drift_detected": d, "champion_version": "2"}
            for i, d in enumerate(drifted)]


@pytest.mark.parametrize(
    ("drifted", "promoted_on", "stale"),
    [
        pytest.param([False] * 3 + [True] * 5, None, True, id="drift-for-the-whole-period"),
        pytest.param([False] * 3 + [True] * 4 + [False], None, False, id="quiet-last-day"),
        pytest.param([False] * 3 + [True] * 5, 6, False, id="promoted-within-the-period"),
        pytest.param([False] * 3 + [True] * 5, 1, True, id="promoted-before-the-period"),
        pytest.param([True] * 3, None, False, id="history-shorter-than-the-period"),
    ],
)
def test_stale_champion_in_data_time(drifted: list[bool], promoted_on: int | None, stale: bool) -> None:
    spec = _spec(stale_champion_days=4)
    first = dt.date(2026, 10, 1)
    decisions = [] if promoted_on is None else [
        {"kind": "promoted", "decided_at": dt.datetime.combine(first + dt.timedelta(days=promoted_on), dt.time(3),
                                                               tzinfo=dt.UTC).isoformat()}]
    alert = alerts.stale_champion_alert(spec, decisions=decisions, reports=_reports(first, drifted), link="l")
    assert (alert is not None) == stale
    if alert is not None:
        assert alert.event == "champion_stale" and alert.partition == (first + dt.timedelta(days=len(drifted) - 1)).isoformat()
        assert "no promotion" in alert.reason and alert.details["reports"] == 4


def test_webhook_url_from_an_http_connection() -> None:
    from types import SimpleNamespace

    from evergreen.notifiers import webhook_url

    def conn(**kw: object) -> SimpleNamespace:
        return SimpleNamespace(**{"host": "", "schema": "", "port": None, "extra_dejson": {}, **kw})

    assert webhook_url(conn(host="127.0.0.1", port=8123, extra_dejson={"endpoint": "/hook"})) == "http://127.0.0.1:8123/hook"
    assert webhook_url(conn(host="hooks.example.com", schema="https", extra_dejson={"endpoint": "a/b"})) == \
        "https://hooks.example.com/a/b"
    assert webhook_url(conn(host="https://hooks.example.com/services/x")) == "https://hooks.example.com/services/x"


def test_an_email_route_needs_recipients() -> None:
    with pytest.raises(ValueError, match="needs `to`"):
        AlertRoute(channel="email", conn_id="smtp")
    with pytest.raises(ValueError):
        AlertRoute(channel="webhook", conn_id="hook", events=["nonsense"])
