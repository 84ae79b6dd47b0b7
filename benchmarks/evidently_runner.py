"""Evidently's DataDriftPreset on the same reference and current data (runs in benchmarks/.venv-evidently).

``python -m benchmarks.evidently_runner '{"reference": ..., "current": ..., "numerical": [...],
"categorical": [...], "drift_share": 0.3}'`` with the Evidently venv's interpreter (Evidently 0.7 needs
pandas 2). Imports nothing from evergreen. Verdict: Evidently's dataset drift, i.e. the share of drifted
columns reaching the preset's ``drift_share`` (the harness passes the spec's ``max_drifted_share``, so both
tools use the same dataset-level threshold; the verdict at Evidently's default 0.5 is reported as well).
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks.measure import write_result


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    t = time.perf_counter()
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    imported = time.perf_counter() - t
    columns = [*args["numerical"], *args["categorical"]]
    t = time.perf_counter()
    reference = pd.read_parquet(args["reference"], columns=columns)
    current = pd.read_parquet(args["current"], columns=columns)
    for frame in (reference, current):
        for name in args["categorical"]:
            frame[name] = frame[name].astype("object").where(frame[name].notna(), None).astype("str")
    definition = DataDefinition(numerical_columns=args["numerical"], categorical_columns=args["categorical"])
    preset = DataDriftPreset(drift_share=args["drift_share"]) if args.get("drift_share") else DataDriftPreset()
    snapshot = Report([preset]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    seconds = time.perf_counter() - t
    drifted: list[str] = []
    share = threshold = None
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("DriftedColumnsCount"):
            share, threshold = float(metric["value"]["share"]), float(config.get("drift_share", 0.5))
        elif config.get("type", "").endswith("ValueDrift"):
            if float(metric["value"]) >= float(config.get("threshold", 0.1)) if "distance" in config.get(
                    "method", "").lower() else float(metric["value"]) < float(config.get("threshold", 0.05)):
                drifted.append(config["column"])
    result = {"import_seconds": imported, "stage_seconds": seconds, "rows": len(current),
              "drift_detected": bool(share is not None and threshold is not None and share >= threshold),
              "drift_share_threshold": threshold,
              "drift_detected_at_default_share": bool(share is not None and share >= 0.5),
              "drifted_share": share, "drifted_features": sorted(drifted)}
    write_result(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
