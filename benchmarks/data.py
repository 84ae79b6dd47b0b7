"""Benchmark data: simulated raw days and published feature partitions at named scales, cached on disk.

The ``bench_wide`` spec (``benchmarks/specs/``) is the fraud simulator's 12 features plus 15 auxiliary
numeric columns (some derived from the fraud features, some noise), i.e. 30 model features with the
time features. A scale's data lives in ``benchmarks/results/data/<scale>/storage`` and is reused by later
runs (a ``_ready.json`` marker records what was generated).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SPECS_DIR = BENCH_DIR / "specs"
RESULTS_DIR = BENCH_DIR / "results"
DATA_DIR = RESULTS_DIR / "data"
SPEC_NAME = "bench_wide"
FIRST_DAY = dt.date(2026, 1, 1)
SEED = 11


@dataclass(frozen=True)
class Scale:
    name: str
    rows_per_day: int
    days: int = 30


SCALES = {
    "XS": Scale("XS", 500, 12),
    "S": Scale("S", 10_000),
    "M": Scale("M", 100_000),
    "L": Scale("L", 1_000_000),
}


def days_of(scale: Scale) -> list[dt.date]:
    return [FIRST_DAY + dt.timedelta(days=i) for i in range(scale.days)]


def drift_days(scale: Scale) -> tuple[dt.date, dt.date]:
    """(undrifted, covariate-drifted) current days for the drift benchmark: the day after the window."""
    day = FIRST_DAY + dt.timedelta(days=scale.days)
    return day, day


def load_bench_spec():
    from evergreen.spec import load_spec

    return load_spec(SPECS_DIR / f"{SPEC_NAME}.yaml")


def _fraud_view(spec):
    """The same spec restricted to the fraud simulator's features (what generate_day can produce)."""
    from evergreen.spec import SimulationSpec

    fraud = [f for f in spec.features if not f.name.startswith("aux_")]
    return spec.model_copy(update={"features": fraud, "simulation": SimulationSpec(generator="fraud")})


def generate_raw_day(spec, ds: dt.date, rows: int, *, drift: str | None = None):
    """One raw day of ``bench_wide``: the fraud simulator's columns plus the 15 ``aux_`` columns."""
    import numpy as np
    import pandas as pd
    from evergreen.simulate import generate_day

    frame = generate_day(_fraud_view(spec), ds, seed=SEED, rows=rows, drift=drift,
                         drift_start=ds if drift else None)
    n = len(frame)
    rng = np.random.default_rng([SEED, ds.toordinal(), 99])
    log_amount = np.log1p(frame["amount"].to_numpy())
    risk = frame["device_risk_score"].fillna(0.2).to_numpy()
    age = np.log1p(frame["account_age_days"].to_numpy())
    signals = [log_amount, risk * 10, age, frame["txn_count_24h"].to_numpy(dtype=float)]
    for i in range(1, 16):
        base = signals[i % len(signals)] if i <= 8 else 0.0  # 8 derived columns, 7 pure noise
        values = np.clip(np.round(base + rng.normal(0.0, 1.0 + i / 10, n) * 3, 3), -1000, 1000)
        if i % 5 == 0:
            values[rng.random(n) < 0.05] = np.nan
        frame[f"aux_{i:02d}"] = values
    columns = spec.raw_columns
    return pd.DataFrame({c: frame[c] for c in columns})


def land_raw_day(spec, ds: dt.date, rows: int, *, drift: str | None = None) -> None:
    from evergreen import storage

    frame = generate_raw_day(spec, ds, rows, drift=drift)
    path = storage.resolve(spec.source.path.format(ds=ds.isoformat()))
    storage.write_bytes_atomic(path, storage.frame_to_parquet_bytes(frame))


def publish_features_fast(spec, ds: dt.date) -> dict:
    """Raw day -> published feature partition with the ETL's own code, minus the GX gate (data prep only).

    The ETL benchmark measures the real path (``run_feature_etl``); preparing 30 days of L-scale data
    through it would only make the preparation slower.
    """
    from evergreen.etl import ingest as etl

    frame, sources, _ = etl.read_raw_partition(spec, ds)
    validation = {"engine": "benchmark-prep (not validated)", "success": True, "rows": len(frame),
                  "sources": sources}
    staged = etl.build_feature_partition(spec, ds, validation)
    return etl.publish_feature_partition(spec, ds, staged)


def storage_dir(scale: Scale, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / scale.name / "storage"


def ensure_data(scale: Scale, *, data_dir: Path = DATA_DIR, log=print) -> Path:
    """Raw days + published feature partitions of the training window for ``scale`` (cached)."""
    root = storage_dir(scale, data_dir)
    marker = data_dir / scale.name / "_ready.json"
    wanted = {"scale": scale.name, "rows_per_day": scale.rows_per_day, "days": scale.days, "seed": SEED,
              "version": 2}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return root
    root.mkdir(parents=True, exist_ok=True)
    os.environ["EVERGREEN_STORAGE_ROOT"] = str(root)
    spec = load_bench_spec()
    started = time.perf_counter()
    for i, ds in enumerate(days_of(scale)):
        land_raw_day(spec, ds, scale.rows_per_day)
        publish_features_fast(spec, ds)
        if scale.rows_per_day >= 100_000 or i == scale.days - 1:
            log(f"[data {scale.name}] day {i + 1}/{scale.days} ready ({time.perf_counter() - started:.0f} s)")
    marker.write_text(json.dumps(wanted))
    return root


def drift_frames(scale: Scale, data_dir: Path = DATA_DIR) -> dict[str, Path]:
    """Reference day and two current days (clean, covariate drift) as feature Parquet files (cached)."""
    from evergreen import storage
    from evergreen.etl import ingest as etl

    folder = data_dir / scale.name / "drift"
    names = {"reference": folder / "reference.parquet", "clean": folder / "current_clean.parquet",
             "drifted": folder / "current_drifted.parquet"}
    if all(p.exists() for p in names.values()):
        return names
    folder.mkdir(parents=True, exist_ok=True)
    spec = load_bench_spec()
    reference_day, current_day = dt.date(2026, 1, 28), dt.date(2026, 2, 4)  # two Wednesdays
    for key, ds, drift in (("reference", reference_day, None), ("clean", current_day, None),
                           ("drifted", current_day, "covariate")):
        raw = generate_raw_day(spec, ds, scale.rows_per_day, drift=drift)
        features = etl.build_features(spec, etl.parse_timestamps(spec, raw))
        names[key].write_bytes(storage.frame_to_parquet_bytes(features))
    return names


def main(argv: list[str]) -> int:
    """``python -m benchmarks.data '{"action": ...}'``: data preparation in its own process.

    The harness keeps its own memory small this way: a child's peak RSS as the kernel reports it starts
    from the RSS of the process that forked it.
    """
    args = json.loads(argv[0])
    scale = SCALES[args["scale"]]
    data_dir = Path(args.get("data_dir") or DATA_DIR)
    action = args["action"]
    if action == "ensure":
        out: object = str(ensure_data(scale, data_dir=data_dir))
    elif action == "drift_frames":
        out = {k: str(v) for k, v in drift_frames(scale, data_dir).items()}
    elif action == "land":
        os.environ["EVERGREEN_STORAGE_ROOT"] = args["storage_root"]
        spec = load_bench_spec()
        first = dt.date.fromisoformat(args["first"])
        for i in range(int(args.get("days", 1))):
            land_raw_day(spec, first + dt.timedelta(days=i), scale.rows_per_day)
        out = args["storage_root"]
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps({"result": out}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
