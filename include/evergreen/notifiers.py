"""Alert delivery through Airflow: notifiers on Airflow's base class, reading Airflow connections.

Airflow glue, like the factory: the events and the once-per-partition rule are :mod:`evergreen.alerts`.
``EvergreenNotifier`` is a task-failure callback (failures of data quality are told apart from the rest);
:func:`notify` sends an alert built inside a task; :func:`data_late` is the ETL's deadline callback
(run by the triggerer). A webhook POSTs the alert as JSON; email goes through the SMTP provider's hook.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from typing import Any

from airflow.sdk import BaseNotifier

from evergreen import alerts
from evergreen.spec import AlertRoute, PipelineSpec

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 10.0


def _connection(conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


def webhook_url(conn: Any) -> str:
    """The URL of an HTTP connection, HttpHook's way: scheme from ``schema``, path from ``extra.endpoint``."""
    host = str(conn.host or "")
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}"
    if conn.port:
        host = f"{host.rstrip('/')}:{conn.port}"
    endpoint = str((conn.extra_dejson or {}).get("endpoint") or "")
    return f"{host.rstrip('/')}/{endpoint.lstrip('/')}" if endpoint else host


def post_webhook(route: AlertRoute, alert: alerts.Alert) -> None:
    conn = _connection(route.conn_id)
    headers = {"Content-Type": "application/json", **dict((conn.extra_dejson or {}).get("headers") or {})}
    if conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    request = urllib.request.Request(webhook_url(conn), data=json.dumps(alert.to_dict(), sort_keys=True).encode(),
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:  # noqa: S310 (the operator's URL)
        if response.status >= 300:
            raise RuntimeError(f"webhook {route.conn_id} answered HTTP {response.status}")


def send_email(route: AlertRoute, alert: alerts.Alert) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=route.conn_id) as hook:
        hook.send_email_smtp(to=route.to, subject=alert.subject, html_content=alert.to_html(),
                             from_email=route.from_email or hook.from_email or "evergreen@localhost")


def deliver(route: AlertRoute, alert: alerts.Alert) -> None:
    """Send one alert on one route (raises on failure: the caller's retry sends it again)."""
    (post_webhook if route.channel == "webhook" else send_email)(route, alert)


def notify(spec: PipelineSpec, alert: alerts.Alert | None) -> list[str]:
    """Send ``alert`` (None: nothing) on the spec's routes, once per route and partition."""
    if alert is None or not alerts.routes_for(spec, alert.event):
        return []
    sent = alerts.send(spec, alert, deliver)
    log.info("alert %s %s for %s: sent on %s", alert.event, alert.partition, spec.name, sent or "none (sent before)")
    return sent


def ui_link(dag_id: str, run_id: str | None = None, task_id: str | None = None) -> str:
    """The Airflow UI page of a DAG, a run or a task of a run (``[api] base_url``)."""
    from airflow.configuration import conf

    base = str(conf.get("api", "base_url", fallback="http://localhost:8080")).rstrip("/")
    link = f"{base}/dags/{dag_id}"
    if run_id:
        link += f"/runs/{run_id}"
        if task_id:
            link += f"/tasks/{task_id}"
    return link


def _spec(spec_name: str) -> PipelineSpec:
    from evergreen.spec import load_valid_specs

    return load_valid_specs()[0][spec_name]


class EvergreenNotifier(BaseNotifier):
    """``on_failure_callback`` of every task of a spec with alert routes: ``task_failed``, or
    ``data_quality_failed`` when bad data failed the task (a DataQualityError behind the failure)."""

    def __init__(self, spec_name: str) -> None:
        super().__init__()
        self.spec_name = spec_name

    def notify(self, context: Any) -> None:
        from evergreen.errors import DataQualityError

        spec = _spec(self.spec_name)
        ti = context["ti"]
        error = context.get("exception")
        data_quality = isinstance(error, DataQualityError) or isinstance(getattr(error, "__cause__", None),
                                                                         DataQualityError)
        notify(spec, alerts.failure_alert(spec, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id,
                                          occurrence=_occurrence(spec, context), error=error,
                                          data_quality=data_quality, link=ui_link(ti.dag_id, ti.run_id, ti.task_id)))


def _occurrence(spec: PipelineSpec, context: Any) -> str:
    """``ds=<day>`` of the failed run (ETL ``ds``, training ``as_of``); its run id for runs without a day."""
    from evergreen.factory import partition_date_from_context

    params = context.get("params") or {}
    if "ds" not in params and "as_of" not in params:
        return str(context["ti"].run_id)
    try:
        return f"ds={partition_date_from_context(spec, 'ds' if 'ds' in params else 'as_of', context)}"
    except ValueError:
        return str(context["ti"].run_id)


async def data_late(context: Any, spec_name: str, deadline: str = "") -> None:
    """Deadline callback of the ETL DAG (run by the triggerer): the day's data has not landed in time."""
    dag_run = (context or {}).get("dag_run") or {}
    get = dag_run.get if isinstance(dag_run, dict) else (lambda key, default=None: getattr(dag_run, key, default))
    # The triggerer hands over the run as the REST API shows it (``dag_run_id``).
    dag_id, run_id = str(get("dag_id", "") or ""), str(get("run_id", "") or get("dag_run_id", "") or "")
    spec = _spec(spec_name)
    alert = alerts.late_data_alert(spec, dag_id=dag_id, run_id=run_id, deadline=deadline,
                                   link=ui_link(dag_id, run_id) if dag_id else "")
    await asyncio.to_thread(notify, spec, alert)
