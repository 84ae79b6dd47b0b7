"""The Evergreen page inside the Airflow UI: a FastAPI app the api-server mounts at ``/evergreen``.

Airflow does not authenticate plugin apps, so every route here does: the caller is the Airflow user of
the request (its bearer token, or the UI's session cookie), resolved by Airflow's own ``get_user``, and
every spec is shown only to a user the auth manager lets read the spec's training DAG. The one action,
rollback, needs permission to trigger the spec's rollback DAG and goes through Airflow (a DAG run of
``<spec>_rollback``, as the trigger form would create); the web process never writes to MLflow. With
``promotion.mode: approval`` the page lists the promotions waiting for a person and answers them through
Airflow's own REST API (the human-in-the-loop detail of ``request_approval``), as Airflow's UI does.
Actions are JSON POSTs with a custom header, which a cross-site form cannot send (no CSRF by cookie).
"""

from __future__ import annotations

import html
import json
import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

log = logging.getLogger(__name__)

ACTION_HEADER = "X-Evergreen-Action"
PREFIX = "/evergreen"


# ------------------------------------------------------------------------------------------ auth


async def current_user(request: Request) -> Any:
    """The authenticated Airflow user (401 without one); Airflow's own resolution, cookie or bearer."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    credentials = await bearer_scheme(request)
    return await get_user(request, None, credentials)


User = Annotated[Any, Depends(current_user)]


def allowed(user: Any, dag_id: str, *, action: bool = False) -> bool:
    """Whether the auth manager lets ``user`` read ``dag_id`` (or, ``action``, trigger a run of it)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return get_auth_manager().is_authorized_dag(
        method="POST" if action else "GET", access_entity=DagAccessEntity.RUN if action else None,
        details=DagDetails(id=dag_id), user=user)


def visible_specs(user: Any) -> dict[str, Any]:
    from evergreen.spec import load_valid_specs

    return {name: spec for name, spec in sorted(load_valid_specs()[0].items()) if allowed(user, spec.dag_id("training"))}


def spec_for(user: Any, name: str) -> Any:
    """The spec ``name`` if ``user`` may read it: 404 for no such spec, 403 without permission."""
    from evergreen.spec import load_valid_specs

    spec = load_valid_specs()[0].get(name)
    if spec is None:
        raise HTTPException(status_code=404, detail=f"no spec {name!r}")
    if not allowed(user, spec.dag_id("training")):
        raise HTTPException(status_code=403, detail=f"no permission on the DAGs of spec {name!r}")
    return spec


# ------------------------------------------------------------------------------------------ pages


def _page(title: str, body: str) -> HTMLResponse:
    style = ("body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}table{border-collapse:collapse;"
             "margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left;font-size:.9rem}"
             "th{background:#f3f5f7}.ok{color:#1a7f37}.bad{color:#c62828}.muted{color:#666}"
             "button{padding:.3rem .8rem;margin-left:.5rem}section{margin-bottom:1.5rem}")
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<style>{style}</style></head><body>{body}</body></html>")


def _fmt(value: Any) -> str:
    if value is None:
        return "<span class='muted'>-</span>"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _alias_rows(health: dict[str, Any], base: str) -> str:
    rows = []
    for alias, info in health["aliases"].items():
        if info is None:
            rows.append(f"<tr data-alias='{alias}'><th>{alias}</th><td colspan='6' class='muted'>none</td></tr>")
            continue
        link = f"<a href='{html.escape(info['mlflow_url'])}' target='_blank'>run</a>" if info["mlflow_url"] else ""
        link += f" <a class='card' href='{base}/versions/{html.escape(str(info['version']))}/card'>card</a>"
        rows.append(
            f"<tr data-alias='{alias}'><th>{alias}</th><td class='version'>v{_fmt(info['version'])}</td>"
            f"<td>{_fmt(info['candidate'])}</td><td>{_fmt(info['as_of'])}</td>"
            f"<td>{_fmt(info['holdout_metric'])}</td><td><code>{_fmt((info['data_digest'] or '')[:12])}</code></td>"
            f"<td>{link} <code>{_fmt(info['run_id'][:12])}</code></td></tr>")
    head = (f"<tr><th>alias</th><th>version</th><th>candidate</th><th>as_of</th><th>holdout {health['primary_metric']}"
            "</th><th>data digest</th><th>MLflow</th></tr>")
    return f"<table id='aliases'>{head}{''.join(rows)}</table>"


def _gates(health: dict[str, Any]) -> str:
    latest = health["latest_gates"]
    if latest is None:
        return "<p class='muted'>no training decision yet</p>"
    decision, report = latest["decision"], latest["report"]
    rows = "".join(
        f"<tr><td class='{'ok' if g.get('passed') else 'bad'}'>{'pass' if g.get('passed') else 'FAIL'}</td>"
        f"<td>{_fmt(g.get('name'))}</td><td>{_fmt(g.get('value'))}</td><td>{_fmt(g.get('threshold'))}</td>"
        f"<td>{_fmt(g.get('detail'))}</td></tr>" for g in report.get("gates", []))
    return (f"<p id='latest-decision'>decision <b>{_fmt(decision['kind'])}</b> at {_fmt(decision['decided_at'])} "
            f"(version {_fmt(decision.get('version'))}, champion {_fmt(decision.get('champion_before'))} &rarr; "
            f"{_fmt(decision.get('champion_after'))})</p><table id='gates'><tr><th></th><th>gate</th><th>value</th>"
            f"<th>threshold</th><th>detail</th></tr>{rows}</table>")


def _drift(health: dict[str, Any], base: str) -> str:
    from evergreen.charts import line_chart

    trend = health["drift"]
    if not trend:
        return "<p class='muted'>no drift reports yet</p>"
    days = [d["ds"] for d in trend]
    series: dict[str, list[float | None]] = {"drifted share": [d["drifted_share"] for d in trend]}
    for name in health["key_features"]:
        series[f"PSI {name}"] = [d["key_psi"].get(name) for d in trend]
    chart = line_chart(days, series, title="Drift per day: share of drifted features and the key features' PSI",
                       markers={"drifted share": [d["drift_detected"] for d in trend]}, marker_text="drift detected")
    rows = "".join(
        f"<tr data-ds='{d['ds']}'><td><a href='{base}/reports/drift/{d['ds']}'>{d['ds']}</a></td>"
        f"<td class='{'bad' if d['drift_detected'] else 'ok'}'>{'drift' if d['drift_detected'] else 'ok'}</td>"
        f"<td>{_fmt(d['drifted_share'])}</td>"
        + "".join(f"<td>{_fmt(d['key_psi'].get(n))}</td>" for n in health["key_features"])
        + f"<td>v{_fmt(d['champion_version'])}</td></tr>" for d in reversed(trend))
    head = ("<tr><th>day</th><th>verdict</th><th>drifted share</th>"
            + "".join(f"<th>PSI {html.escape(n)}</th>" for n in health["key_features"]) + "<th>champion</th></tr>")
    return f"<div id='drift-chart'>{chart}</div><table id='drift'>{head}{rows}</table>"


def _performance(health: dict[str, Any], base: str) -> str:
    from evergreen.charts import line_chart

    trend = health["performance"]
    if not health["late_labels"]:
        return "<p class='muted'>labels come with the features: realized performance is the holdout's</p>"
    if not trend:
        return "<p class='muted'>no outcomes yet</p>"
    days = [d["ds"] for d in trend]
    roles = sorted({role for d in trend for role in d["models"]})
    series = {f"{role} {health['primary_metric']}": [(d["models"].get(role) or {}).get("metric") for d in trend]
              for role in roles}
    chart = line_chart(days, series, title=f"Realized {health['primary_metric']} per prediction day")
    return f"<div id='performance-chart'>{chart}</div><p><a href='{base}/reports/performance'>performance report</a></p>"


def _table(entries: list[dict[str, Any]], columns: list[str], table_id: str) -> str:
    if not entries:
        return "<p class='muted'>none yet</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(e.get(c))}</td>" for c in columns) + "</tr>" for e in reversed(entries))
    return f"<table id='{table_id}'><tr>{head}</tr>{rows}</table>"


def _approvals(health: dict[str, Any]) -> str:
    if health["promotion_mode"] != "approval":
        return ""
    dag_id = json.dumps(f"{health['spec']}_training")
    return (f"<section><h2>Waiting for approval</h2><div id='approvals'>loading ...</div></section>"
            f"{APPROVAL_SCRIPT}<script>loadApprovals({html.escape(dag_id, quote=False)});</script>")


ROLLBACK_SCRIPT = """
<script>
async function rollback(base) {
  const target = document.getElementById('rollback-target').value.trim();
  const reason = document.getElementById('rollback-reason').value.trim() || 'rollback from the Evergreen page';
  const response = await fetch(base + '/rollback', {method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json', 'X-Evergreen-Action': 'rollback'},
    body: JSON.stringify({target_version: target || null, reason: reason})});
  const body = await response.json();
  document.getElementById('rollback-result').textContent = response.ok
    ? 'rollback requested: DAG run ' + body.dag_run_id + ' of ' + body.dag_id
    : 'refused (' + response.status + '): ' + (body.detail || '');
}
</script>
"""


APPROVAL_SCRIPT = """
<script>
// Pending approvals and their answers go through Airflow's own REST API (the UI's session cookie): Airflow
// checks the user's permission and records who answered, as its Required actions view does.
async function loadApprovals(dagId) {
  const list = document.getElementById('approvals');
  const response = await fetch('/api/v2/dags/' + encodeURIComponent(dagId) +
    '/dagRuns/~/hitlDetails?response_received=false&task_id=request_approval', {credentials: 'same-origin'});
  if (!response.ok) { list.textContent = 'cannot list approvals (' + response.status + ')'; return; }
  const pending = (await response.json()).hitl_details || [];
  list.textContent = pending.length ? '' : 'no promotion waits for approval';
  for (const item of pending) {
    const ti = item.task_instance, row = document.createElement('div');
    row.className = 'approval'; row.dataset.runId = ti.dag_run_id;
    const title = document.createElement('p'); title.textContent = item.subject + ' (run ' + ti.dag_run_id + ')';
    const body = document.createElement('pre'); body.textContent = item.body || '';
    row.append(title, body);
    for (const option of item.options) {
      const button = document.createElement('button'); button.textContent = option;
      button.onclick = () => answer(dagId, ti.dag_run_id, option, row);
      row.append(button);
    }
    list.append(row);
  }
}
async function answer(dagId, runId, option, row) {
  const response = await fetch('/api/v2/dags/' + encodeURIComponent(dagId) + '/dagRuns/' + encodeURIComponent(runId) +
    '/taskInstances/request_approval/-1/hitlDetails', {method: 'PATCH', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify({chosen_options: [option], params_input: {}})});
  const result = document.createElement('p'); result.className = 'answer';
  result.textContent = response.ok ? 'answered: ' + option : 'refused (' + response.status + ')';
  row.append(result);
}
</script>
"""


def spec_page(health: dict[str, Any], base: str, can_rollback: bool) -> HTMLResponse:
    rollback = (f"<section><h2>Rollback</h2><input id='rollback-target' placeholder='version (default: "
                f"previous_champion)'><input id='rollback-reason' placeholder='reason'><button id='rollback' "
                f"onclick=\"rollback('{base}')\">Roll back champion</button> <span id='rollback-result'></span>"
                f"<p class='muted'>Runs the <code>{html.escape(health['spec'])}_rollback</code> DAG.</p></section>"
                if can_rollback else "<p class='muted'>you may not trigger a rollback of this spec</p>")
    body = (
        f"<p><a href='{PREFIX}/'>Evergreen</a> / {html.escape(health['spec'])}</p>"
        f"<h1>{html.escape(health['spec'])}</h1><p>{html.escape(health['description'])} "
        f"<span class='muted'>owner {html.escape(health['owner'])}, promotion {health['promotion_mode']}, newest "
        f"partition {_fmt(health['newest_partition'])}, last promotion {_fmt(health['last_promotion'])}, "
        f"retrains triggered {health['retrains_triggered']}</span></p>"
        f"<section><h2>Models</h2>{_alias_rows(health, base)}</section>"
        f"<section><h2>Latest gate report</h2>{_gates(health)}</section>"
        f"<section><h2>Drift</h2>{_drift(health, base)}</section>"
        f"<section><h2>Realized performance</h2>{_performance(health, base)}</section>"
        f"<section><h2>Trigger ledger</h2><p class='muted'>the sensor's decisions on drift and performance "
        f"(days without drift are the drift table's ok rows)</p>"
        f"{_table([e for e in health['ledger'] if e.get('decision') != 'no_drift'], ['ds', 'decision', 'decided_at', 'trigger_run_id', 'detail'], 'ledger')}</section>"
        f"<section><h2>Decisions</h2>{_table(health['decisions'], ['decided_at', 'kind', 'version', 'champion_before', 'champion_after', 'actor'], 'decisions')}</section>"
        f"{_approvals(health)}{rollback}{ROLLBACK_SCRIPT}")
    return _page(f"Evergreen: {health['spec']}", body)


# ------------------------------------------------------------------------------------------ app


def create_app() -> FastAPI:
    """The app the plugin mounts (``plugins/evergreen_plugin.py``)."""
    app = FastAPI(title="Evergreen", description="Model health of every Evergreen spec", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index(user: User) -> HTMLResponse:
        from evergreen import registry

        rows = []
        for name, spec in visible_specs(user).items():
            champion = registry.alias_version(registry._client(), spec.registered_model_name, "champion")
            rows.append(f"<tr><td><a href='{PREFIX}/specs/{name}'>{html.escape(name)}</a></td>"
                        f"<td>{html.escape(spec.description)}</td><td>{'v' + champion if champion else _fmt(None)}</td></tr>")
        table = ("<table id='specs'><tr><th>spec</th><th>description</th><th>champion</th></tr>"
                 + "".join(rows) + "</table>") if rows else "<p class='muted'>no spec you may see</p>"
        return _page("Evergreen", f"<h1>Evergreen</h1>{table}<p><a href='{PREFIX}/metrics'>metrics</a></p>")

    @app.get("/api/specs/{name}")
    def health_json(name: str, user: User) -> JSONResponse:
        from evergreen.evaluation import json_safe
        from evergreen.health import spec_health

        return JSONResponse(json_safe(spec_health(spec_for(user, name))))

    @app.get("/specs/{name}", response_class=HTMLResponse)
    def page(name: str, user: User) -> HTMLResponse:
        from evergreen.health import spec_health

        spec = spec_for(user, name)
        return spec_page(spec_health(spec), f"{PREFIX}/specs/{name}", allowed(user, spec.dag_id("rollback"), action=True))

    @app.get("/specs/{name}/reports/drift/{ds}", response_class=HTMLResponse)
    def drift_report(name: str, ds: str, user: User) -> HTMLResponse:
        import datetime as dt

        from evergreen import layout, storage

        spec = spec_for(user, name)
        try:
            day = dt.date.fromisoformat(ds)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail="ds must be YYYY-MM-DD") from exc
        path = storage.at(layout.drift_report_html(spec.name, day))
        if not path.exists():
            raise HTTPException(status_code=404, detail=f"no drift report for {ds}")
        return HTMLResponse(path.read_text())

    @app.get("/specs/{name}/versions/{version}/card", response_class=HTMLResponse)
    def model_card(name: str, version: str, user: User) -> HTMLResponse:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from evergreen.model_card import render_html

        spec = spec_for(user, name)
        if not version.isdigit():
            raise HTTPException(status_code=400, detail="version must be a number")
        try:
            found = MlflowClient().get_model_version(spec.registered_model_name, version)
        except MlflowException as exc:
            raise HTTPException(status_code=404, detail=f"no version {version} of {spec.registered_model_name}") from exc
        if not found.description:
            raise HTTPException(status_code=404, detail=f"version {version} has no model card")
        return HTMLResponse(render_html(found.description, f"Model card: {spec.registered_model_name} v{version}"))

    @app.get("/specs/{name}/reports/performance", response_class=HTMLResponse)
    def performance_report(name: str, user: User) -> HTMLResponse:
        from evergreen import layout, storage

        spec = spec_for(user, name)
        path = storage.at(layout.performance_report_html(spec.name))
        if not path.exists():
            raise HTTPException(status_code=404, detail="no performance report yet")
        return HTMLResponse(path.read_text())

    @app.post("/specs/{name}/rollback")
    async def rollback(name: str, request: Request, user: User,
                       action: Annotated[str | None, Header(alias=ACTION_HEADER)] = None) -> JSONResponse:
        import asyncio

        spec = spec_for(user, name)
        if action != "rollback":
            raise HTTPException(status_code=400, detail=f"actions need the header {ACTION_HEADER}: rollback")
        dag_id = spec.dag_id("rollback")
        if not allowed(user, dag_id, action=True):
            raise HTTPException(status_code=403, detail=f"no permission to trigger {dag_id}")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise HTTPException(status_code=400, detail="the body must be JSON") from exc
        conf = {"target_version": body.get("target_version") or None,
                "reason": str(body.get("reason") or "rollback from the Evergreen page")}
        run_id = await asyncio.to_thread(trigger_rollback, dag_id, conf, user.get_name())
        log.info("rollback of %s requested by %s: %s", spec.name, user.get_name(), run_id)
        return JSONResponse({"dag_id": dag_id, "dag_run_id": run_id, "conf": conf}, status_code=201)

    @app.get("/metrics")
    def metrics(user: User) -> Response:
        from evergreen.health import prometheus_text

        return Response(prometheus_text(list(visible_specs(user).values())),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def trigger_rollback(dag_id: str, conf: dict[str, Any], user_name: str) -> str:
    """A manual run of the rollback DAG, created the way Airflow's REST API creates one."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    run = trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.REST_API, triggering_user_name=user_name, conf=conf,
                      note=f"rollback requested by {user_name} from the Evergreen page")
    return str(run.run_id)
