"""docker-compose.yaml as data, resolved by docker-compose itself (anchors, ``.env``, interpolation).

Shared by the compose checks (tests/integration/test_compose.py) and the loopback run of the same services
(tests/integration/test_production.py). ``docker-compose config`` only reads files: no Docker engine is needed.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
MAKE_ENV = REPO / "scripts" / "make-env.py"
ENSURE_SERVICES = REPO / "scripts" / "ensure-services.sh"

AIRFLOW_SERVICES = (
    "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    "airflow-worker",
)
# Names in the shell environment override .env for docker-compose: keep the caller's out.
_FOREIGN_PREFIXES = ("AIRFLOW", "MLFLOW_", "EVERGREEN_", "AWS_", "GX_", "COMPOSE_", "MINIO_", "S3_", "POSTGRES_")


@functools.cache
def ensure_services() -> str:
    """Run scripts/ensure-services.sh once per session (installs/starts what is missing); its output."""
    result = subprocess.run(["bash", str(ENSURE_SERVICES)], capture_output=True, text=True, timeout=600,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/ensure-services.sh failed ({result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def clean_environ() -> dict[str, str]:
    """os.environ without the variables the stack configures (the test session sets some of them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (surrounding quotes removed), as docker-compose reads them."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not match:
            continue
        raw = match[2].strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            raw = raw[1:-1]
        values[match[1]] = raw
    return values


def make_env(path: Path, **overrides: str) -> dict[str, str]:
    """Write a .env with ``scripts/make-env.py`` (fresh secrets, ``overrides`` via --set); its values."""
    argv = [sys.executable, str(MAKE_ENV), "-o", str(path), "--force"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return read_dotenv(path)


def compose(env_file: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``docker-compose --env-file ENV -f docker-compose.yaml ARGS`` in a clean environment."""
    ensure_services()
    return subprocess.run(
        ["docker-compose", "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), "--env-file", str(env_file),
         *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=clean_environ(), cwd=REPO,
    )


def resolved_config(env_file: Path) -> dict[str, Any]:
    """The compose file as docker-compose resolves it with ``env_file`` (``$$`` still escaped)."""
    result = compose(env_file, "config")
    if result.returncode != 0:
        raise AssertionError(f"docker-compose config failed:\n{result.stderr[-3000:]}")
    return yaml.safe_load(result.stdout)


def unescape(value: str) -> str:
    """What a container sees of a resolved compose string: ``$$`` is a literal ``$``."""
    return value.replace("$$", "$")


def command_list(value: Any) -> list[str]:
    """A compose command/entrypoint (string or list) as a list of words."""
    if value is None:
        return []
    if isinstance(value, str):
        import shlex

        return shlex.split(value)
    return [str(v) for v in value]


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {k: unescape("" if v is None else str(v)) for k, v in env.items()}
