"""``make demo``: a local Airflow 3 + MLflow stack running Evergreen's fraud pipeline end to end.

    python -m devtools.demo            # start the stack, backfill 28 days of features, take in the
                                       # chargebacks, train, promote, then play days of drift and outcomes
    python -m devtools.demo status     # what is running, and where
    python -m devtools.demo stop       # stop the stack (``make stop``)

Everything lives under ``<repo>/.evergreen/demo`` (gitignored): Airflow home and logs, the MLflow
backend, and the storage root. Dates are fixed, so two runs produce the same data and the same model.
The stack stays up after the demo so the UIs can be explored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devtools.localstack import (
    REPO,
    LocalStack,
    StackError,
    port_in_use,
    status_from_pidfile,
    stop_from_pidfile,
)

DEFAULT_HOME = REPO / ".evergreen" / "demo"
MARKER = ".evergreen-demo"
SPEC = "fraud"
HISTORY_START = dt.date(2026, 10, 1)
HISTORY_END = dt.date(2026, 10, 28)
SEED = 42
ETL_DAG = f"{SPEC}_feature_etl"
TRAINING_DAG = f"{SPEC}_training"
ROLLBACK_DAG = f"{SPEC}_rollback"
MONITOR_DAG = f"{SPEC}_drift_monitor"
SENSOR_DAG = f"{SPEC}_drift_sensor"
OUTCOMES_DAG = f"{SPEC}_outcomes"
DRIFT_START = HISTORY_END + dt.timedelta(days=3)  # two normal days, then covariate drift
PLAY_END = DRIFT_START + dt.timedelta(days=1)

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def elapsed() -> str:
    return f"{time.monotonic() - _T0:5.1f}s"


class DemoError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ steps


def prepare_home(home: Path) -> None:
    """Start from a clean home; only ever delete a folder this demo created (it holds the marker)."""
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise DemoError(f"{home} exists and was not created by the demo; choose another --home")
        stop_from_pidfile(home)  # leftovers of an earlier demo (its PostgreSQL too) before their files go
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("created by `python -m devtools.demo`; deleted by the next demo run\n")


def land_history(storage: Path) -> list[str]:
    os.environ["EVERGREEN_STORAGE_ROOT"] = str(storage)
    from evergreen.simulate import land_days
    from evergreen.spec import get_spec

    spec = get_spec(SPEC)
    written = land_days(spec, HISTORY_START, HISTORY_END, seed=SEED)
    raw_folder = spec.source.path.split("/ds=")[0]
    return [uri for uri in written if f"/{raw_folder}/" in uri]  # the raw days, not the chargeback files


def _run_counts(runs: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["state"]] = counts.get(run["state"], 0) + 1
    order = ["success", "running", "queued", "failed"]
    return ", ".join(f"{counts[s]} {s}" for s in order + sorted(set(counts) - set(order)) if counts.get(s))


def backfill_features(stack: LocalStack, days: int) -> list[dict[str, Any]]:
    stack.unpause(ETL_DAG)
    backfill = stack.backfill(ETL_DAG, HISTORY_START, HISTORY_END, max_active_runs=4)
    say(f"backfill #{backfill['id']} created for {ETL_DAG} {HISTORY_START}..{HISTORY_END} "
        f"({days} runs, executed by the scheduler)")
    last = [0.0]

    def progress(runs: list[dict[str, Any]]) -> None:
        if time.monotonic() - last[0] >= 10 or all(r["state"] in ("success", "failed") for r in runs):
            last[0] = time.monotonic()
            say(f"  [{elapsed()}] {ETL_DAG}: {_run_counts(runs)} of {days}")

    return stack.wait_for_runs(ETL_DAG, count=days, run_type="backfill", timeout=600, progress=progress)


def report_failures(stack: LocalStack, dag_id: str, runs: list[dict[str, Any]]) -> None:
    for run in runs:
        if run["state"] == "success":
            continue
        failed = [ti["task_id"] for ti in stack.task_instances(dag_id, run["dag_run_id"]) if ti["state"] == "failed"]
        say(f"  FAILED {run['dag_run_id']}: tasks {failed or '?'}")
    say(f"  task logs: {stack.airflow_home / 'logs'} or the Airflow UI {stack.airflow_url}/dags/{dag_id}")


def published_partitions(storage: Path) -> dict[str, dict[str, Any]]:
    base = storage / "features" / SPEC
    found = {}
    for manifest in sorted(base.glob("ds=*/_manifest.json")):
        found[manifest.parent.name[3:]] = json.loads(manifest.read_text())
    return found


def train(stack: LocalStack) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    stack.unpause(TRAINING_DAG)
    stack.unpause(ROLLBACK_DAG)
    run = stack.trigger(TRAINING_DAG, {"as_of": HISTORY_END.isoformat(), "reason": "manual"})
    run_id = run["dag_run_id"]
    say(f"triggered {TRAINING_DAG} run {run_id} (as_of={HISTORY_END}, reason=manual)")
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 600
    while True:
        tis = stack.task_instances(TRAINING_DAG, run_id)
        for ti in sorted(tis, key=lambda t: t.get("start_date") or "9"):
            state = ti["state"] or "none"
            if seen.get(ti["task_id"]) != state and state in ("running", "success", "failed", "upstream_failed"):
                seen[ti["task_id"]] = state
                took = f" in {ti['duration']:.1f}s" if state == "success" and ti.get("duration") else ""
                say(f"  [{elapsed()}] {ti['task_id']}: {state}{took}")
        current = stack.dag_run(TRAINING_DAG, run_id)
        if current["state"] in ("success", "failed"):
            break
        if time.monotonic() > deadline:
            raise DemoError(f"{TRAINING_DAG} run {run_id} did not finish in 10 minutes (state {current['state']})")
        time.sleep(2)
    if current["state"] != "success":
        report_failures(stack, TRAINING_DAG, [current])
        raise DemoError(f"{TRAINING_DAG} run {run_id} failed")
    decision = stack.xcom(TRAINING_DAG, run_id, "promote_if_better")
    gates = stack.xcom(TRAINING_DAG, run_id, "evaluate_gates")
    return current, decision, gates


def run_and_wait(stack: LocalStack, dag_id: str, conf: dict[str, Any] | None = None,
                 timeout: float = 600) -> dict[str, Any]:
    """Trigger a run without a logical date (as the UI does) and wait for it to finish."""
    run = stack.trigger(dag_id, conf or {})
    return stack.wait_for_runs(dag_id, run_ids=[run["dag_run_id"]], timeout=timeout)[0]


def take_outcomes(stack: LocalStack, as_of: dt.date) -> dict[str, Any]:
    """One outcomes run on the data clock: the chargebacks arrived by ``as_of`` in, joined to the predictions."""
    run = run_and_wait(stack, OUTCOMES_DAG, {"ds": as_of.isoformat()})
    if run["state"] != "success":
        report_failures(stack, OUTCOMES_DAG, [run])
        raise DemoError(f"{OUTCOMES_DAG} run {run['dag_run_id']} failed")
    return stack.xcom(OUTCOMES_DAG, run["dag_run_id"], "join_outcomes")


def print_outcomes(storage: Path, joined: dict[str, Any], days: Sequence[dt.date]) -> None:
    """What the outcomes of ``days`` say as of the run: waiting for chargebacks, or realized performance."""
    from evergreen import layout

    for ds in days:
        manifest = storage / "outcomes" / SPEC / f"ds={ds}" / "_manifest.json"
        if not manifest.exists():
            say(f"    ds={ds}: no outcomes (no predictions, or its window closed before they were made)")
            continue
        outcome = json.loads(manifest.read_text())
        champion = outcome["models"].get("champion") or {}
        if not outcome["labelled_rows"]:
            say(f"    ds={ds}: {champion.get('rows', 0):,} predictions by v{champion.get('version')}, "
                "chargeback window still open: no label counts yet")
            continue
        metrics = champion.get("metrics") or {}
        say(f"    ds={ds}: matured, {outcome['labelled_rows']:,} rows labelled ({champion.get('coverage', 0):.0%}), "
            f"{outcome['late_labels']} chargebacks too late; realized roc_auc of v{champion.get('version')} "
            f"{_fmt(metrics.get('roc_auc'))}")
    say(f"    realized performance: {storage / layout.performance_report_html(SPEC)} (JSON: {joined['report']})")


def monitor_drift(stack: LocalStack) -> dict[str, Any]:
    """One drift-monitor run: scores and reports every partition that has no report yet."""
    run = run_and_wait(stack, MONITOR_DAG)
    if run["state"] != "success":
        report_failures(stack, MONITOR_DAG, [run])
        raise DemoError(f"{MONITOR_DAG} run {run['dag_run_id']} failed")
    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(MONITOR_DAG, run["dag_run_id"])}
    if states.get("announce_drift_reports") != "success":
        return {"reports": [], "drifted": []}
    return stack.xcom(MONITOR_DAG, run["dag_run_id"], "announce_drift_reports")


def sense_drift(stack: LocalStack) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One drift-sensor run: its decisions, and the training run it started (if any), finished."""
    run = run_and_wait(stack, SENSOR_DAG)
    if run["state"] != "success":
        report_failures(stack, SENSOR_DAG, [run])
        raise DemoError(f"{SENSOR_DAG} run {run['dag_run_id']} failed")
    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(SENSOR_DAG, run["dag_run_id"])}
    if states.get("decide_retrain") != "success":  # the sensor found nothing new and soft-failed
        return {"decisions": [], "trigger": None}, None
    decided = stack.xcom(SENSOR_DAG, run["dag_run_id"], "decide_retrain")
    if not decided.get("trigger"):
        return decided, None
    run_id = decided["trigger"]["run_id"]
    training = stack.wait_for_runs(TRAINING_DAG, run_ids=[run_id], timeout=600)[0]
    return decided, training


def play_days(stack: LocalStack, storage: Path, start: dt.date, end: dt.date, *, drift: str | None,
              drift_start: dt.date | None) -> list[dict[str, Any]]:
    """Land new raw days (optionally drifted) and run the feature ETL for each through the scheduler."""
    os.environ["EVERGREEN_STORAGE_ROOT"] = str(storage)
    from evergreen.simulate import land_days
    from evergreen.spec import get_spec

    land_days(get_spec(SPEC), start, end, seed=SEED, drift=drift, drift_start=drift_start)
    run_ids = []
    day = start
    while day <= end:
        run_ids.append(stack.trigger(ETL_DAG, {"ds": day.isoformat()})["dag_run_id"])
        day += dt.timedelta(days=1)
    runs = stack.wait_for_runs(ETL_DAG, run_ids=run_ids, timeout=600)
    if any(r["state"] != "success" for r in runs):
        report_failures(stack, ETL_DAG, runs)
        raise DemoError("feature ETL failed for a played day")
    return runs


def print_sensor(decided: dict[str, Any]) -> None:
    interesting = [d for d in decided.get("decisions", []) if d["decision"] != "no_drift"]
    quiet = len(decided.get("decisions", [])) - len(interesting)
    if quiet:
        say(f"  {quiet} report(s) without drift: no_drift")
    for entry in interesting:
        say(f"  ds={entry['ds']}: {entry['decision']}"
            + (f" -> {entry['trigger_run_id']}" if entry.get("trigger_run_id") else "")
            + (f" ({entry['detail']})" if entry.get("detail") else ""))


def drift_story(stack: LocalStack, storage: Path) -> dict[str, Any]:
    """Monitor history, play normal then drifted days, let the sensor retrain once, then hit the cooldown."""
    for dag_id in (MONITOR_DAG, SENSOR_DAG, OUTCOMES_DAG):
        stack.unpause(dag_id)
    say(f"drift monitor: a report per partition of the {(HISTORY_END - HISTORY_START).days + 1}-day history, "
        "against the champion's reference profile ...")
    summary = monitor_drift(stack)
    say(f"  [{elapsed()}] {len(summary['reports'])} reports, drift on {summary['drifted'] or 'no day'}")
    decided, _ = sense_drift(stack)
    print_sensor(decided)
    joined = take_outcomes(stack, HISTORY_END)
    say(f"  [{elapsed()}] outcomes as of {HISTORY_END}: the champion's predictions joined to the chargebacks")
    print_outcomes(storage, joined, [HISTORY_END - dt.timedelta(days=3), HISTORY_END])

    say(f"playing {HISTORY_END + dt.timedelta(days=1)}..{PLAY_END}: covariate drift injected from {DRIFT_START} "
        "(amounts up, more web/digital goods)")
    play_days(stack, storage, HISTORY_END + dt.timedelta(days=1), PLAY_END - dt.timedelta(days=1),
              drift="covariate", drift_start=DRIFT_START)
    summary = monitor_drift(stack)
    late_day = HISTORY_END + dt.timedelta(days=1)
    joined = take_outcomes(stack, PLAY_END - dt.timedelta(days=1))  # the retrain below sees these chargebacks
    say(f"  [{elapsed()}] a late-label day: {late_day} is predicted now, its chargebacks come over 3 days")
    print_outcomes(storage, joined, [HISTORY_END, late_day])
    say(f"  [{elapsed()}] new reports: {[r.split('ds=')[1][:10] for r in summary['reports']]}; "
        f"drift detected on {summary['drifted'] or 'no day'}")
    for ds in summary["drifted"]:
        report = json.loads((storage / "reports" / "drift" / SPEC / f"ds={ds}" / "report.json").read_text())
        for reason in report["reasons"][:3]:
            say(f"    ds={ds}: {reason}")
    decided, training = sense_drift(stack)
    print_sensor(decided)
    result: dict[str, Any] = {"first_trigger": decided.get("trigger"), "training": training}
    if training is not None:
        say(f"  [{elapsed()}] drift-triggered {TRAINING_DAG} run {training['dag_run_id']}: {training['state']} "
            f"(conf {decided['trigger']['conf']})")
        states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(TRAINING_DAG, training["dag_run_id"])}
        if training["state"] == "success" and states.get("promote_if_better") == "skipped":
            say("  skipped: the window holds no data the champion was not trained on (chargebacks still to come)")
        elif training["state"] == "success":
            decision = stack.xcom(TRAINING_DAG, training["dag_run_id"], "promote_if_better")
            gates = stack.xcom(TRAINING_DAG, training["dag_run_id"], "evaluate_gates")
            print_decision(decision, gates)
            result["decision"] = decision

    say(f"one more drifted day ({PLAY_END}): the cooldown must hold the next retrain back")
    play_days(stack, storage, PLAY_END, PLAY_END, drift="covariate", drift_start=DRIFT_START)
    monitor_drift(stack)
    decided, training = sense_drift(stack)
    print_sensor(decided)
    result["second_trigger"] = decided.get("trigger")
    joined = take_outcomes(stack, PLAY_END)
    say(f"  [{elapsed()}] outcomes as of {PLAY_END}: {late_day}'s window has closed, its outcome is in")
    print_outcomes(storage, joined, [late_day])
    result["late_label_day"] = json.loads((storage / "outcomes" / SPEC / f"ds={late_day}" / "_manifest.json").read_text())
    return result


def print_decision(decision: dict[str, Any], gates: dict[str, Any]) -> None:
    summary = decision.get("gates") or {}
    metric = summary.get("primary_metric")
    say(f"decision: {decision.get('kind')} -- model '{decision.get('model_name')}' version {decision.get('version')}; "
        f"champion {decision.get('champion_before')} -> {decision.get('champion_after')}")
    say(f"  {metric}: challenger {_fmt(summary.get('challenger'))}, champion {_fmt(summary.get('champion'))}")
    for gate in gates.get("gates", []):
        mark = "pass" if gate.get("passed") else "FAIL"
        threshold = gate.get("threshold")
        value = gate.get("value")
        if value is None:
            text = gate.get("detail", "")
        else:
            text = _fmt(value) + (f" (threshold {_fmt(threshold)})" if threshold is not None else "")
        say(f"  [{mark}] {gate.get('name')}: {text}")
    for reason in decision.get("reasons") or []:
        say(f"  reason: {reason}")
    card = decision.get("model_card")
    if card:
        say(f"  model card: {card['markdown']} (also the version's description in MLflow, and the Evergreen page)")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------ commands


def run(home: Path, airflow_port: int, mlflow_port: int) -> int:
    for label, port, flag in (("Airflow UI", airflow_port, "--airflow-port"), ("MLflow UI", mlflow_port, "--mlflow-port")):
        if port_in_use(port):
            say(f"port {port} (for the {label}) is already in use on 127.0.0.1. If it is an earlier demo, run "
                f"`python -m devtools.demo stop` (make stop); otherwise free it or pass {flag}.")
            return 2
    status = status_from_pidfile(home)
    if status and any(p.get("alive") for p in status.get("processes", [])):
        say(f"a demo stack is already running from {home}: `python -m devtools.demo stop` first")
        return 2
    prepare_home(home)
    storage = home / "storage"
    stack = LocalStack(home, storage, airflow_port=airflow_port, mlflow_port=mlflow_port)
    timings: dict[str, float] = {}

    def step(name: str, started: float) -> None:
        timings[name] = time.monotonic() - started

    say(f"home {home}")
    say("starting Airflow 3 (api-server, scheduler, dag-processor, triggerer; LocalExecutor, PostgreSQL) + MLflow ...")
    started = time.monotonic()
    stack.start(wait_for_dags=[ETL_DAG, TRAINING_DAG, ROLLBACK_DAG, MONITOR_DAG, SENSOR_DAG, OUTCOMES_DAG], timeout=300)
    step("start stack", started)
    say(f"  [{elapsed()}] healthy: Airflow {stack.airflow_url}, MLflow {stack.mlflow_url}; DAGs parsed")

    started = time.monotonic()
    days = (HISTORY_END - HISTORY_START).days + 1
    written = land_history(storage)
    step("land raw data", started)
    say(f"  [{elapsed()}] landed {len(written)} days of simulated '{SPEC}' transactions "
        f"({HISTORY_START}..{HISTORY_END}, seed {SEED}) under {storage / 'raw' / SPEC}")

    started = time.monotonic()
    runs = backfill_features(stack, days)
    step("feature backfill", started)
    ok = [r for r in runs if r["state"] == "success"]
    partitions = published_partitions(storage)
    rows = sum(int(m.get("rows", 0)) for m in partitions.values())
    say(f"  [{elapsed()}] backfill: {len(ok)}/{len(runs)} runs succeeded (run_type backfill)")
    if partitions:
        say(f"  published {len(partitions)} feature partitions with manifests "
            f"(ds={min(partitions)}..ds={max(partitions)}, {rows:,} rows) under {storage / 'features' / SPEC}")
    if len(ok) != len(runs):
        report_failures(stack, ETL_DAG, runs)
        say("the stack is left running for inspection; `python -m devtools.demo stop` stops it")
        return 1

    started = time.monotonic()
    try:
        stack.unpause(OUTCOMES_DAG)
        ingested = take_outcomes(stack, HISTORY_END)["labels"]
        say(f"  [{elapsed()}] {OUTCOMES_DAG} as of {HISTORY_END}: {sum(d['rows'] for d in ingested):,} chargebacks "
            f"from {sum(1 for d in ingested if d['rows'])} arrival days published under {storage / 'labels' / SPEC}; "
            "a day counts once its 3-day chargeback window has closed, so training uses the days up to "
            f"{HISTORY_END - dt.timedelta(days=3)}")
        step("chargebacks", started)
        started = time.monotonic()
        _run, decision, gates = train(stack)
    except DemoError as exc:
        say(f"ERROR: {exc}")
        say("the stack is left running for inspection; `python -m devtools.demo stop` stops it")
        return 1
    step("training", started)
    print_decision(decision, gates)

    started = time.monotonic()
    try:
        story = drift_story(stack, storage)
    except DemoError as exc:
        say(f"ERROR: {exc}")
        say("the stack is left running for inspection; `python -m devtools.demo stop` stops it")
        return 1
    step("drift loop", started)
    decision = story.get("decision") or decision

    say("")
    say(f"done in {time.monotonic() - _T0:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})")
    say("the stack keeps running; look around:")
    say(f"  Airflow UI   {stack.airflow_url}   user {stack.username}   password {stack.password}")
    say(f"               DAGs {ETL_DAG}, {TRAINING_DAG}, {MONITOR_DAG}, {SENSOR_DAG}, {OUTCOMES_DAG}, {ROLLBACK_DAG}")
    say(f"  Evergreen    {stack.airflow_url}/plugin/evergreen   (Browse > Evergreen in the Airflow UI: champion, "
        "gates, drift and outcomes, rollback;")
    say(f"               metrics {stack.airflow_url}/evergreen/metrics with an Airflow token)")
    say(f"  MLflow UI    {stack.mlflow_url}   (experiment '{SPEC}', registered model "
        f"'{decision.get('model_name')}', alias champion -> v{decision.get('champion_after')})")
    say(f"  storage      {storage}   (raw/, features/, labels/, predictions/, outcomes/, reports/drift/{SPEC}/ds=*/report.html,")
    say(f"               reports/performance/{SPEC}/report.html,")
    say(f"               models/{SPEC}/decisions/ and models/{SPEC}/drift_triggers/)")
    say(f"  history      EVERGREEN_STORAGE_ROOT={storage} MLFLOW_TRACKING_URI={stack.mlflow_url} "
        f".venv/bin/evergreen history --spec {SPEC}")
    say(f"  logs         {stack.log_dir}  and task logs in {stack.airflow_home / 'logs'}")
    say("  status: python -m devtools.demo status    stop: python -m devtools.demo stop  (make stop)")
    return 0


def status(home: Path) -> int:
    state = status_from_pidfile(home)
    if state is None:
        say(f"no demo stack running from {home}")
        return 1
    for proc in state.get("processes", []):
        say(f"  {proc['name']:<14} pid {proc['pid']:<8} {'running' if proc.get('alive') else 'NOT RUNNING'}"
            f"   log {proc['log']}")
    health = state.get("health") or {}
    if "error" in health:
        say(f"  Airflow API not answering at {state['airflow_url']}: {health['error']}")
    else:
        say("  health: " + ", ".join(f"{k} {v.get('status')}" for k, v in health.items() if isinstance(v, dict)))
        try:
            stack = LocalStack.attach(home)
            for dag_id in (ETL_DAG, TRAINING_DAG, ROLLBACK_DAG):
                runs = stack.dag_runs(dag_id)
                say(f"  {dag_id}: {len(runs)} runs" + (f" ({_run_counts(runs)})" if runs else ""))
            say(f"  Airflow UI {stack.airflow_url}  user {stack.username}  password {stack.password}")
        except (StackError, OSError) as exc:
            say(f"  could not query the API: {exc}")
    if state.get("mlflow_url"):
        say(f"  MLflow UI  {state['mlflow_url']}")
    say(f"  storage    {state.get('storage_root')}")
    database = state.get("database") or {}
    for purpose, url in sorted((database.get("urls") or {}).items()):
        say(f"  database   {purpose}: {url} ({database.get('kind')})")
    alive = all(p.get("alive") for p in state.get("processes", []))
    return 0 if alive else 1


def stop(home: Path) -> int:
    if not (home / "stack.json").exists():
        say(f"no demo stack running from {home}")
        return 0
    stopped = stop_from_pidfile(home)
    say(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "status", "stop"])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("EVERGREEN_DEMO_HOME", DEFAULT_HOME)),
                        help=f"demo folder (default {DEFAULT_HOME}); `run` wipes it first")
    parser.add_argument("--airflow-port", type=int, default=8080)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    args = parser.parse_args(argv)
    home = args.home.expanduser().resolve()
    try:
        if args.command == "status":
            return status(home)
        if args.command == "stop":
            return stop(home)
        return run(home, args.airflow_port, args.mlflow_port)
    except (StackError, DemoError) as exc:
        say(f"ERROR: {exc}")
        if args.command == "run" and (home / "stack.json").exists():
            say("the stack is left running for inspection; `python -m devtools.demo stop` stops it")
        return 1
    except KeyboardInterrupt:
        say("interrupted; stopping the stack")
        stop_from_pidfile(home)
        return 130


if __name__ == "__main__":
    sys.exit(main())
