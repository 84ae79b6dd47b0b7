"""A local Airflow 3 stack in separate processes: api-server, scheduler, dag-processor, triggerer (+ MLflow).

Used by ``make demo`` and the scheduler tests. Everything it writes lives under one home folder::

    <home>/airflow/            AIRFLOW_HOME: airflow.cfg, task logs, passwords file
    <home>/logs/<name>.log     stdout+stderr of each process
    <home>/stack.json          the pidfile: pids, ports, URLs (read by ``stop_from_pidfile``)
    <home>/secrets.json        JWT / API / Fernet secrets and the admin password, reused across restarts
    <home>/mlflow/             MLflow artifacts
    <home>/postgres/           the embedded PostgreSQL server (devtools.database) unless EVERGREEN_DATABASE_URL

Airflow's metadata DB and MLflow's backend store are PostgreSQL databases (never SQLite: it is not safe
for the scheduler, the API server and the task processes writing at once). The stack runs the
LocalExecutor with the SimpleAuthManager (user ``admin``), DAGs paused at creation, and by default no schedule-driven runs (``scheduled_runs=False``): only backfills and
triggered runs execute, so nothing runs by surprise. No Airflow import here: subprocesses and urllib.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from devtools.database import Database, for_home, stop_embedded

REPO = Path(__file__).resolve().parent.parent
PIDFILE = "stack.json"
SECRETS_FILE = "secrets.json"
TERMINAL_STATES = frozenset({"success", "failed"})
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# Environment inherited from the caller that must not leak into the stack (it sets its own).
_STRIP_PREFIXES = ("AIRFLOW_", "AIRFLOW__", "MLFLOW_")
_STRIP_KEYS = {"EVERGREEN_STORAGE_ROOT", "EVERGREEN_MLFLOW_ARTIFACT_ROOT", "EVERGREEN_SPECS_DIR"}


class StackError(RuntimeError):
    """The stack failed to start, a request failed, or a wait timed out."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when missing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64_000))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of a process (to tell a recorded pid from a reused one), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers signal 0
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _iso(value: dt.date | dt.datetime | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.isoformat()
    return dt.datetime.combine(value, dt.time(), tzinfo=dt.UTC).isoformat()


# ------------------------------------------------------------------------------------- stopping


def _terminate(entries: list[dict[str, Any]], timeout: float = 30.0) -> list[str]:
    """SIGTERM each recorded process group (newest first), wait, then SIGKILL what is left."""
    stopped: list[str] = []
    live: list[dict[str, Any]] = []
    verified: list[dict[str, Any]] = []
    for entry in reversed(entries):
        pid = int(entry["pid"])
        if not _alive(pid) or (entry.get("start_time") and _proc_start_time(pid) != entry["start_time"]):
            continue  # gone, or the pid now belongs to someone else
        live.append(entry)
        verified.append(entry)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(entry.get("pgid", pid)), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        live_now = [e for e in live if _alive(int(e["pid"]))]
        stopped.extend(e["name"] for e in live if e not in live_now)
        live = live_now
        if live:
            time.sleep(0.2)
    for entry in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(entry.get("pgid", entry["pid"])), signal.SIGKILL)
        stopped.append(f"{entry['name']} (killed)")
    # Leftovers in the groups we verified (e.g. task processes outliving their supervisor): kill quietly.
    for entry in verified:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(entry.get("pgid", entry["pid"])), signal.SIGKILL)
    return stopped


def read_pidfile(home: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(home) / PIDFILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def stop_from_pidfile(home: str | os.PathLike[str], timeout: float = 30.0) -> list[str]:
    """Stop a stack started (possibly by another process) in ``home``; return what was stopped."""
    state = read_pidfile(home)
    if state is None:
        return []
    stopped = _terminate(list(state.get("processes", [])), timeout=timeout)
    if stop_embedded(state.get("database")):
        stopped.append("postgres")
    (Path(home) / PIDFILE).unlink(missing_ok=True)
    return stopped


def status_from_pidfile(home: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The pidfile with each process marked alive or not, plus the api-server health (None: no stack)."""
    state = read_pidfile(home)
    if state is None:
        return None
    for entry in state.get("processes", []):
        pid = int(entry["pid"])
        entry["alive"] = _alive(pid) and _proc_start_time(pid) == entry.get("start_time", _proc_start_time(pid))
    try:
        with urllib.request.urlopen(f"{state['airflow_url']}/api/v2/monitor/health", timeout=5) as resp:
            state["health"] = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        state["health"] = {"error": str(exc)}
    return state


# ---------------------------------------------------------------------------------------- stack


class LocalStack:
    """Airflow 3 (+ optional MLflow server) as local processes under ``home``; a small REST client.

    ``stack = LocalStack(home, storage_root, airflow_port=8080, mlflow_port=5000); stack.start(...)``;
    always ``stack.stop()`` (or ``stop_from_pidfile(home)`` from another process).
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        storage_root: str | os.PathLike[str],
        *,
        airflow_port: int = 8080,
        mlflow_port: int | None = None,
        repo: str | os.PathLike[str] = REPO,
        bin_dir: str | os.PathLike[str] | None = None,
        parallelism: int = 4,
        scheduled_runs: bool = False,
        dag_refresh_seconds: int = 10,
        extra_env: Mapping[str, str] | None = None,
        database: Database | None = None,
        database_prefix: str | None = None,
    ) -> None:
        self.home = Path(home).resolve()
        self.storage_root = str(storage_root) if "://" in str(storage_root) else str(Path(storage_root).resolve())
        self.airflow_port = int(airflow_port)
        self.mlflow_port = int(mlflow_port) if mlflow_port else None
        self.repo = Path(repo).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else Path(sys.executable).parent
        self.parallelism = parallelism
        self.scheduled_runs = scheduled_runs
        self.dag_refresh_seconds = dag_refresh_seconds
        self.extra_env = dict(extra_env or {})
        self._database = database
        # Per home: stacks sharing one EVERGREEN_DATABASE_URL server never drop each other's databases.
        self.database_prefix = database_prefix or "evergreen_" + hashlib.sha256(
            str(Path(home).resolve()).encode()).hexdigest()[:10]
        self.airflow_home = self.home / "airflow"
        self.log_dir = self.home / "logs"
        self.mlflow_dir = self.home / "mlflow"
        self.airflow_url = f"http://127.0.0.1:{self.airflow_port}"
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}" if self.mlflow_port else None
        self.username = "admin"
        self._procs: dict[str, subprocess.Popen] = {}
        self._entries: list[dict[str, Any]] = []
        self._token: str | None = None
        self._secrets: dict[str, str] | None = None
        self._log_ports: tuple[int, int] | None = None

    @classmethod
    def attach(cls, home: str | os.PathLike[str]) -> LocalStack:
        """A client for a stack already running from ``home`` (started by another process)."""
        state = read_pidfile(home)
        if state is None:
            raise StackError(f"no stack running from {home} (no {PIDFILE})")
        stack = cls(home, state["storage_root"], airflow_port=state["airflow_port"],
                    mlflow_port=state.get("mlflow_port"), repo=state.get("repo", REPO),
                    bin_dir=state.get("bin_dir"), database_prefix=state.get("database_prefix"))
        stack._entries = list(state.get("processes", []))
        return stack

    # ------------------------------------------------------------------ configuration

    @property
    def pidfile(self) -> Path:
        return self.home / PIDFILE

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def secrets(self) -> dict[str, str]:
        """Secrets shared by every process, generated once per home and reused on restart."""
        if self._secrets is None:
            path = self.home / SECRETS_FILE
            stored = json.loads(path.read_text()) if path.exists() else {}
            fresh = {
                "jwt_secret": secrets.token_urlsafe(32),
                "api_secret_key": secrets.token_urlsafe(32),
                "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "admin_password": secrets.token_urlsafe(12),
            }
            merged = {**fresh, **stored}
            if merged != stored:
                self.home.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(merged, indent=2) + "\n")
                path.chmod(0o600)
            self._secrets = merged
        return self._secrets

    @property
    def password(self) -> str:
        return self.secrets["admin_password"]

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_url or self.database.url("mlflow")

    @property
    def database(self) -> Database:
        """The PostgreSQL databases of this stack (``devtools.database.for_home``), started if embedded."""
        if self._database is None:
            self._database = for_home(self.home, prefix=self.database_prefix)
        return self._database

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process (and of ``airflow`` CLI calls against this stack)."""
        if self._log_ports is None:
            self._log_ports = (free_port(), free_port())
        base = {
            k: v for k, v in os.environ.items()
            if not k.startswith(_STRIP_PREFIXES) and k not in _STRIP_KEYS
        }
        env = {
            **base,
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.repo / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.repo / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__CORE__FERNET_KEY": self.secrets["fernet_key"],
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database.url("airflow"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.airflow_port),
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "AIRFLOW__API__SECRET_KEY": self.secrets["api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": self.secrets["jwt_secret"],
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(self.scheduled_runs),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(self.dag_refresh_seconds),
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(max(self.dag_refresh_seconds, 30)),
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.airflow_home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self._log_ports[0]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._log_ports[1]),
            "GX_ANALYTICS_ENABLED": "false",
            "EVERGREEN_STORAGE_ROOT": self.storage_root,
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
        }
        # config/airflow_local_settings.py preloads the task libraries in the scheduler (see that file).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.repo / "config"), base.get("PYTHONPATH")]))
        if not self.mlflow_url:  # no server: keep MLflow's artifacts under home, not in a cwd ./mlruns
            env["EVERGREEN_MLFLOW_ARTIFACT_ROOT"] = (self.mlflow_dir / "artifacts").as_uri()
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - the child owns it; closed below
        try:
            proc = subprocess.Popen(
                argv, env=dict(env), cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()
        self._procs[name] = proc
        self._entries.append({
            "name": name, "pid": proc.pid, "pgid": proc.pid, "start_time": _proc_start_time(proc.pid),
            "argv": argv, "log": str(self.log_path(name)),
        })
        self._write_pidfile()
        return proc

    def _write_pidfile(self) -> None:
        state = {
            "home": str(self.home),
            "airflow_url": self.airflow_url,
            "airflow_port": self.airflow_port,
            "mlflow_url": self.mlflow_url,
            "mlflow_port": self.mlflow_port,
            "repo": str(self.repo),
            "bin_dir": str(self.bin_dir),
            "storage_root": self.storage_root,
            "username": self.username,
            "passwords_file": str(self.passwords_file),
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "processes": self._entries,
            "database": self._database.describe() if self._database else None,
            "database_prefix": self.database_prefix,
        }
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.pidfile)

    def _check_alive(self, names: Iterable[str]) -> None:
        for name in names:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise StackError(
                    f"{name} exited with code {proc.returncode}; last lines of {self.log_path(name)}:\n"
                    f"{tail(self.log_path(name))}"
                )

    def _run_cli(self, name: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        with open(self.log_path(name), "ab") as log:
            result = subprocess.run(
                argv, env=self.env(), cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=timeout, check=False,
            )
        if result.returncode != 0:
            raise StackError(
                f"`{' '.join(argv[1:])}` failed ({result.returncode}); last lines of {self.log_path(name)}:\n"
                f"{tail(self.log_path(name))}"
            )
        return result

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run an ``airflow`` CLI command against this stack; output captured."""
        return subprocess.run(
            [str(self.bin_dir / "airflow"), *args], env=self.env(), cwd=self.home, capture_output=True,
            text=True, timeout=timeout, check=False,
        )

    def start(self, wait_for_dags: Iterable[str] = (), timeout: float = 240) -> LocalStack:
        """Migrate the DB and start every process; return once healthy and ``wait_for_dags`` are parsed.

        On failure the stack is stopped and a StackError carries the tail of the relevant log.
        """
        if read_pidfile(self.home) is not None and any(
            e.get("alive") for e in (status_from_pidfile(self.home) or {}).get("processes", [])
        ):
            raise StackError(f"a stack is already running from {self.home} (stop it first: see {self.pidfile})")
        ports = [("Airflow", self.airflow_port)] + ([("MLflow", self.mlflow_port)] if self.mlflow_port else [])
        for label, port in ports:
            if port_in_use(port):
                raise StackError(f"port {port} (for the {label} UI) is already in use on 127.0.0.1")
        for folder in (self.airflow_home, self.log_dir, self.mlflow_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if "://" not in self.storage_root:
            Path(self.storage_root).mkdir(parents=True, exist_ok=True)
        self._entries = []
        deadline = time.monotonic() + timeout
        try:
            self.database.create_databases(fresh=True)  # a new stack starts from empty databases
            self._write_pidfile()
            self._write_passwords()
            if self.mlflow_port:
                self._start_mlflow()
            self._run_cli("db-migrate", [str(self.bin_dir / "airflow"), "db", "migrate"], timeout=timeout)
            from evergreen.factory import REGISTRY_POOL, REGISTRY_POOL_DESCRIPTION

            self._run_cli("pools", [str(self.bin_dir / "airflow"), "pools", "set", REGISTRY_POOL, "1",
                                    REGISTRY_POOL_DESCRIPTION], timeout=timeout)
            env = self.env()
            airflow = str(self.bin_dir / "airflow")
            self._spawn("api-server", [airflow, "api-server", "--host", "127.0.0.1",
                                       "--port", str(self.airflow_port), "--workers", "1"], env)
            self._spawn("scheduler", [airflow, "scheduler"], env)
            self._spawn("dag-processor", [airflow, "dag-processor"], env)
            self._spawn("triggerer", [airflow, "triggerer"], env)
            if self.mlflow_port:
                self._wait_http(f"{self.mlflow_url}/health", "mlflow", deadline)
            self._wait_healthy(deadline)
            self._wait_dags(list(wait_for_dags), deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_passwords(self) -> None:
        """Pre-seed the SimpleAuthManager passwords file so the admin password is known (and stable)."""
        current = {}
        if self.passwords_file.exists():
            with contextlib.suppress(ValueError):
                current = json.loads(self.passwords_file.read_text() or "{}")
        if current.get(self.username) != self.password:
            current[self.username] = self.password
            self.passwords_file.write_text(json.dumps(current) + "\n")
            self.passwords_file.chmod(0o600)

    def _start_mlflow(self) -> None:
        artifacts = self.mlflow_dir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in self.env().items() if not k.startswith("MLFLOW_")}
        self._spawn("mlflow", [
            str(self.bin_dir / "mlflow"), "server",
            "--backend-store-uri", self.database.url("mlflow"),
            "--artifacts-destination", str(artifacts),
            "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(self.mlflow_port),
            "--workers", "1",
        ], env)

    def _wait_http(self, url: str, name: str, deadline: float) -> None:
        while True:
            self._check_alive([name])
            try:
                with urllib.request.urlopen(url, timeout=3) as resp:
                    if resp.status == 200:
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{name} not answering at {url}; last lines of {self.log_path(name)}:\n"
                                 f"{tail(self.log_path(name))}")
            time.sleep(0.5)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.airflow_url}/api/v2/monitor/health", timeout=5) as resp:
            return json.loads(resp.read())

    def _wait_healthy(self, deadline: float) -> None:
        components = {"metadatabase": "api-server", "scheduler": "scheduler", "dag_processor": "dag-processor",
                      "triggerer": "triggerer"}
        last: dict[str, Any] = {}
        while True:
            self._check_alive(AIRFLOW_COMPONENTS)
            try:
                last = self.health()
                unhealthy = [c for c in components if (last.get(c) or {}).get("status") != "healthy"]
                if not unhealthy:
                    return
            except (OSError, ValueError) as exc:
                last, unhealthy = {"error": str(exc)}, ["api-server"]
            if time.monotonic() > deadline:
                name = components.get(unhealthy[0], unhealthy[0])
                raise StackError(
                    f"Airflow not healthy in time ({', '.join(unhealthy)}): {last}\n"
                    f"last lines of {self.log_path(name)}:\n{tail(self.log_path(name))}"
                )
            time.sleep(1)

    def _wait_dags(self, dag_ids: list[str], deadline: float) -> None:
        if not dag_ids:
            return
        while True:
            self._check_alive(AIRFLOW_COMPONENTS)
            known = {d["dag_id"] for d in self.get("/dags", limit=1000).get("dags", [])}
            missing = sorted(set(dag_ids) - known)
            if not missing:
                return
            errors = self.get("/importErrors").get("import_errors", [])
            if errors:
                detail = "\n".join(f"{e.get('filename')}: {e.get('stack_trace')}" for e in errors)
                raise StackError(f"DAG import errors:\n{detail}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"DAGs not parsed in time: {missing}; last lines of {self.log_path('dag-processor')}:\n"
                    f"{tail(self.log_path('dag-processor'))}"
                )
            time.sleep(1)

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Terminate every process (process groups), wait, kill on timeout; remove the pidfile."""
        stopped = _terminate(self._entries, timeout=timeout) if self._entries else []
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        self._procs.clear()
        self._entries = []
        if self._database is not None and stop_embedded(self._database.describe()):
            stopped.append("postgres")
        self.pidfile.unlink(missing_ok=True)
        return stopped

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST client

    def token(self, refresh: bool = False) -> str:
        """A JWT for ``admin`` from ``POST /auth/token`` (cached)."""
        if self._token is None or refresh:
            body = self._request("POST", f"{self.airflow_url}/auth/token",
                                 {"username": self.username, "password": self.password}, auth=False)
            self._token = body["access_token"]
        return self._token

    def _request(self, method: str, url: str, body: Any = None, *, auth: bool = True, retry: bool = True) -> Any:
        if method == "GET":
            # Reads are idempotent: a busy API server (2 cores shared with the scheduler and the tasks) that
            # times out once is asked again, twice at most; writes are never repeated blindly.
            for attempt in range(3):
                try:
                    return self._send(method, url, body, auth=auth, retry=retry)
                except (TimeoutError, urllib.error.URLError):  # HTTP errors arrive as StackError
                    if attempt == 2:
                        raise
                    time.sleep(2 * (attempt + 1))
        return self._send(method, url, body, auth=auth, retry=retry)

    def _send(self, method: str, url: str, body: Any = None, *, auth: bool = True, retry: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            if exc.code == 401 and auth and retry:
                self.token(refresh=True)
                return self._send(method, url, body, auth=auth, retry=False)
            raise StackError(f"{method} {url} -> HTTP {exc.code}: {detail[:2000]}") from exc
        return json.loads(payload) if payload else None

    def _api(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        url = f"{self.airflow_url}/api/v2{path}"
        if params:
            url += "?" + urllib.parse.urlencode(
                {k: v for k, v in params.items() if v is not None}, doseq=True
            )
        return url

    def get(self, path: str, **params: Any) -> Any:
        return self._request("GET", self._api(path, params))

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", self._api(path), body)

    def patch(self, path: str, body: Any, **params: Any) -> Any:
        return self._request("PATCH", self._api(path, params), body)

    def unpause(self, dag_id: str) -> dict[str, Any]:
        return self.patch(f"/dags/{dag_id}", {"is_paused": False}, update_mask="is_paused")

    def pause(self, dag_id: str) -> dict[str, Any]:
        return self.patch(f"/dags/{dag_id}", {"is_paused": True}, update_mask="is_paused")

    def trigger(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        *,
        logical_date: dt.date | dt.datetime | str | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """Create a manual run (``logical_date`` None: a run without logical date, as in the UI)."""
        body: dict[str, Any] = {"conf": dict(conf or {}),
                                "logical_date": _iso(logical_date) if logical_date is not None else None}
        if run_id:
            body["dag_run_id"] = run_id
        return self.post(f"/dags/{dag_id}/dagRuns", body)

    def backfill(
        self,
        dag_id: str,
        from_date: dt.date | dt.datetime | str,
        to_date: dt.date | dt.datetime | str,
        *,
        max_active_runs: int = 10,
        reprocess_behavior: str = "none",
        via: str = "rest",
    ) -> dict[str, Any]:
        """Airflow's backfill (runs executed by the scheduler), inclusive dates; via REST or the CLI."""
        if via == "cli":
            self._run_cli("backfill", [
                str(self.bin_dir / "airflow"), "backfill", "create", "--dag-id", dag_id,
                "--from-date", _iso(from_date), "--to-date", _iso(to_date),
                "--max-active-runs", str(max_active_runs), "--reprocess-behavior", reprocess_behavior,
            ], timeout=300)
            backfills = self.get("/backfills", dag_id=dag_id, limit=100).get("backfills", [])
            return max(backfills, key=lambda b: b["id"])
        body = {
            "dag_id": dag_id, "from_date": _iso(from_date), "to_date": _iso(to_date),
            "max_active_runs": max_active_runs, "reprocess_behavior": reprocess_behavior,
        }
        # On SQLite the API answers 503 when the scheduler holds the write lock. Ask again only when the
        # refused request left no backfill behind.
        deadline = time.monotonic() + 120
        while True:
            try:
                return self.post("/backfills", body)
            except StackError as exc:
                if "HTTP 503" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(3)
                existing = [b for b in self.get("/backfills", dag_id=dag_id, limit=100).get("backfills", [])
                            if b.get("completed_at") is None]
                if existing:
                    return max(existing, key=lambda b: b["id"])

    def wait_for_backfill(self, backfill_id: int, timeout: float = 600, poll: float = 2.0) -> dict[str, Any]:
        """Wait until the scheduler marks a backfill completed (it checks every 30 s); return it."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(self._procs)
            backfill = self.get(f"/backfills/{backfill_id}")
            if backfill.get("completed_at"):
                return backfill
            if time.monotonic() > deadline:
                raise StackError(f"backfill {backfill_id} not completed after {timeout:.0f}s: {backfill}")
            time.sleep(poll)

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        while True:
            page = self.get(f"/dags/{dag_id}/dagRuns", limit=100, offset=len(runs), order_by="id")
            runs.extend(page.get("dag_runs", []))
            if not page.get("dag_runs") or len(runs) >= page.get("total_entries", 0):
                return runs

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        return self.get(f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances", limit=1000).get("task_instances", [])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """A task's XCom value (deserialized JSON as stored by the task)."""
        quoted = urllib.parse.quote(run_id, safe="")
        entry = self.get(f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/{key}")
        return entry.get("value")

    def wait_for_runs(
        self,
        dag_id: str,
        *,
        count: int = 1,
        run_ids: Iterable[str] | None = None,
        run_type: str | None = None,
        states: Iterable[str] = TERMINAL_STATES,
        timeout: float = 300,
        poll: float = 2.0,
        progress: Any = None,
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` matching runs exist and all are in ``states``; return them.

        Matching: ``run_ids`` if given, else ``run_type`` (e.g. "backfill", "manual") if given, else all.
        ``progress(runs)`` is called whenever the state counts change.
        """
        wanted = set(run_ids) if run_ids is not None else None
        targets = set(states)
        deadline = time.monotonic() + timeout
        last_counts: dict[str, int] | None = None
        while True:
            self._check_alive(self._procs)
            runs = [
                r for r in self.dag_runs(dag_id)
                if (wanted is None or r["dag_run_id"] in wanted) and (run_type is None or r["run_type"] == run_type)
            ]
            counts: dict[str, int] = {}
            for run in runs:
                counts[run["state"]] = counts.get(run["state"], 0) + 1
            if progress is not None and counts != last_counts:
                progress(runs)
            last_counts = counts
            if len(runs) >= max(count, len(wanted or ())) and all(r["state"] in targets for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise StackError(
                    f"timed out after {timeout:.0f}s waiting for {dag_id} runs in {sorted(targets)}: {counts}; "
                    f"last lines of {self.log_path('scheduler')}:\n{tail(self.log_path('scheduler'), 25)}"
                )
            time.sleep(poll)
