"""Measuring one command: wall time, CPU time and peak memory from the OS, and the reports.

Each measurement is a fresh child process reaped with ``os.wait4``, whose rusage is the kernel's
account of that child and the descendants it waited for (the ``RUSAGE_CHILDREN`` numbers of one child):
``ru_maxrss`` is the peak resident set of the largest of them. On Linux a child's ``ru_maxrss`` starts
from the RSS of the process that forked it, so the harness keeps itself small (data preparation runs in
child processes) and reports that floor (an empty interpreter measured the same way). Stages that run
inside the child also report their own in-process time (``stage_seconds``), which excludes interpreter
start and imports.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def machine() -> dict[str, Any]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class MeasureError(RuntimeError):
    pass


def measure(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 3600, log: Path | None = None) -> dict[str, Any]:
    """Run ``argv`` as a child; return wall/CPU seconds, peak RSS (MiB) and the stage's own JSON result.

    The child may write a JSON object to the file named by ``BENCH_RESULT`` (``stage_seconds`` etc.).
    """
    with tempfile.TemporaryDirectory(prefix="evergreen-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        log_path = log or Path(tmp) / "output.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        child_env = {**os.environ, **(env or {}), "BENCH_RESULT": str(result_path)}
        with open(log_path, "ab") as out:
            started = time.perf_counter()
            proc = subprocess.Popen(list(argv), env=child_env, cwd=cwd or REPO, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            timed_out = threading.Event()

            def kill() -> None:
                timed_out.set()
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        if timed_out.is_set():
            raise MeasureError(f"{argv[:4]} timed out after {timeout:.0f} s; log: {log_path}")
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
            raise MeasureError(f"{' '.join(map(str, argv[:6]))} exited {proc.returncode}:\n{tail}")
        extra = json.loads(result_path.read_text()) if result_path.exists() else {}
    return {
        "wall_seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,  # robust to CPU contention, unlike wall time
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "load_average_1m_after": os.getloadavg()[0],  # other work on the machine during the run
        **extra,
    }


def python_stage(stage: str, args: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
                 python: str | None = None, module: str = "benchmarks.worker", timeout: float = 3600,
                 log: Path | None = None, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure ``python -m benchmarks.worker STAGE ARGS`` (a fresh interpreter per measurement)."""
    if argv is None:
        argv = [stage, json.dumps(dict(args), default=str)]
    argv = [python or sys.executable, "-m", module, *argv]
    return measure(argv, env=env, timeout=timeout, log=log)


def write_result(payload: Mapping[str, Any]) -> None:
    """Child side: hand a JSON result to the measuring parent (no-op outside a measurement)."""
    path = os.environ.get("BENCH_RESULT")
    if path:
        Path(path).write_text(json.dumps(payload, default=str))


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """min/median/max of every numeric field over repeated runs."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]
        if values:
            out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    return out


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[tuple[str, str, dict[str, float]]]) -> list[str]:
    """Markdown table lines: benchmark | measure | min | median | max."""
    lines = ["| benchmark | measure | min | median | max |", "| --- | --- | ---: | ---: | ---: |"]
    for name, metric, stats in rows:
        lines.append(f"| {name} | {metric} | {_fmt(stats['min'])} | {_fmt(stats['median'])} | {_fmt(stats['max'])} |")
    return lines


def now_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def profile_summary(stats_file: Path, out: Path, limit: int = 45) -> Path:
    """Top functions by cumulative time of a cProfile dump, as text next to the results."""
    import io
    import pstats

    buffer = io.StringIO()
    stats = pstats.Stats(str(stats_file), stream=buffer)
    stats.strip_dirs().sort_stats("cumulative").print_stats(limit)
    buffer.write("\n--- by own time ---\n")
    stats.sort_stats("tottime").print_stats(25)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(buffer.getvalue())
    return out
