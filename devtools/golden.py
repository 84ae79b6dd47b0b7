"""Golden outputs of the library path the demo runs, to show a refactoring changed nothing.

    python -m devtools.golden WORKDIR OUT.json

In-process, fixed dates and seed: lands and ETLs 30 fraud and 16 delivery_eta days, trains twice per spec
(gates, promotion), scores and monitors the last day; writes every partition's ``content_sha256``, the
holdout, baseline and validation metrics, the gates and decisions, and the drift report and predictions
hashes. Two runs of the same code give the same file; compare the files of two commits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

SPECS = (("fraud", dt.date(2026, 10, 1), dt.date(2026, 10, 30)),
         ("delivery_eta", dt.date(2026, 10, 1), dt.date(2026, 10, 16)))


def golden(workdir: Path) -> dict[str, Any]:
    os.environ.update(EVERGREEN_STORAGE_ROOT=str(workdir / "storage"),
                      MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db",
                      MLFLOW_REGISTRY_URI=f"sqlite:///{workdir}/mlflow.db",
                      EVERGREEN_MLFLOW_ARTIFACT_ROOT=(workdir / "artifacts").as_uri(),
                      EVERGREEN_CAS_SETTLE_SECONDS="0", GX_ANALYTICS_ENABLED="false")
    from evergreen import layout, monitoring, storage
    from evergreen.etl.ingest import run_feature_etl
    from evergreen.evaluation import evaluate_challenger
    from evergreen.registry import promote_if_better
    from evergreen.simulate import land_days
    from evergreen.spec import get_spec
    from evergreen.training.train import train_challenger
    from evergreen.training.window import select_window

    out: dict[str, Any] = {}
    for name, start, end in SPECS:
        spec = get_spec(name)
        land_days(spec, start, end, seed=42)
        days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        result: dict[str, Any] = {"partitions": {d.isoformat(): run_feature_etl(spec, d)["content_sha256"]
                                                 for d in days}}
        if spec.labels is not None:  # the labels that arrived by the last day (fraud: its chargeback feed)
            from evergreen.outcomes import ingest_labels

            result["labels"] = {p["ds"]: p["content_sha256"] for p in ingest_labels(spec, end)}
        for as_of in (end - dt.timedelta(days=2), end):
            window = select_window(spec, as_of)
            trained = train_challenger(spec, window, lineage={"reason": "golden"})
            gates = evaluate_challenger(spec, trained["run_id"])
            decision = promote_if_better(spec, trained["run_id"], gates, dry_run=False, actor="golden",
                                         decided_at=dt.datetime.combine(as_of, dt.time(), tzinfo=dt.UTC),
                                         settle_seconds=0)
            result[as_of.isoformat()] = {
                "digest": window.data_digest, "metrics": trained["metrics"], "baseline": trained["baseline_metrics"],
                "validation": trained["validation_metrics"], "best_iteration": trained["best_iteration"],
                "gates": [(g["name"], g["passed"], g["value"]) for g in gates["gates"]],
                "decision": decision["kind"], "version": decision["version"]}
        report = monitoring.monitor_partition(spec, end)
        stored = storage.read_json(storage.at(layout.drift_report(name, end)))
        result["drift"] = {"drift_detected": report["drift_detected"], "reasons": report["reasons"],
                           "sha": report.get("sha256"),
                           "report_md5": hashlib.md5(json.dumps(stored, sort_keys=True).encode()).hexdigest()}
        result["predictions_sha"] = storage.read_manifest(
            storage.partition_dir(layout.PREDICTIONS, name, end))["content_sha256"]
        out[name] = result
    return out


def main(argv: list[str]) -> int:
    workdir, target = Path(argv[0]).resolve(), Path(argv[1])
    workdir.mkdir(parents=True, exist_ok=False)
    target.write_text(json.dumps(golden(workdir), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
