"""Batch scoring: each published feature partition scored by the champion (and a shadow challenger).

Output: ``predictions/<spec>/ds=YYYY-MM-DD/`` with one row per entity and model, the model version in
every row, and a manifest naming the feature partition and model versions it came from. Same features
and same versions give the same bytes, so reruns and backfills are idempotent.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from evergreen import storage
from evergreen.errors import MissingDataError
from evergreen.spec import PipelineSpec

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
CHAMPION, CHALLENGER = "champion", "challenger"


def _alias_version(name: str, alias: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def scoring_models(spec: PipelineSpec) -> dict[str, str]:
    """``{"champion": version[, "challenger": version]}``; the challenger only when it is not the champion."""
    from evergreen.drift import NoChampionError

    name = spec.registered_model_name
    champion = _alias_version(name, CHAMPION)
    if champion is None:
        raise NoChampionError(f"registered model {name!r} has no @champion to score with")
    models = {CHAMPION: champion}
    challenger = _alias_version(name, CHALLENGER)
    if challenger is not None and challenger != champion:
        models[CHALLENGER] = challenger
    return models


def score_partition(spec: PipelineSpec, ds: dt.date, models: dict[str, str] | None = None) -> dict[str, Any]:
    """Score the day's feature partition; reuse the existing output when inputs and versions match."""
    import pandas as pd

    from evergreen.evaluation import score_frame

    feature_dir = storage.partition_dir("features", spec.name, ds)
    features_manifest = storage.read_manifest(feature_dir)
    if features_manifest is None:
        raise MissingDataError(f"no published feature partition for {spec.name} ds={ds}")
    models = models or scoring_models(spec)
    out_dir = storage.partition_dir(PREDICTIONS, spec.name, ds)
    existing = storage.read_manifest(out_dir)
    if (existing and existing.get("features_content_sha256") == features_manifest["content_sha256"]
            and existing.get("models") == models):
        log.info("predictions for %s ds=%s are current (models %s); nothing to do", spec.name, ds, models)
        return _reference(out_dir, existing)

    frame = storage.read_partition_frame(feature_dir)
    name = spec.registered_model_name
    parts = []
    for role, version in models.items():
        scores = score_frame(f"models:/{name}/{version}", frame) if len(frame) else []
        part = frame[[*spec.entity_keys, spec.timestamp_column]].copy()
        part["model_role"] = pd.Series([role] * len(frame), dtype="str", index=frame.index)
        part["model_version"] = pd.Series([version] * len(frame), dtype="str", index=frame.index)
        part["prediction"] = pd.Series(scores, dtype="float64", index=frame.index)
        parts.append(part)
    predictions = pd.concat(parts, ignore_index=True)
    data = storage.frame_to_parquet_bytes(predictions)
    file_name = storage.stage_data_file(out_dir, data)
    manifest = {
        "spec": spec.name,
        "ds": ds.isoformat(),
        "rows": len(predictions),
        "content_sha256": storage.sha256_bytes(data),
        "files": [{"name": file_name, "sha256": storage.sha256_bytes(data), "rows": len(predictions),
                   "bytes": len(data)}],
        "models": models,
        "model_name": name,
        "features_content_sha256": features_manifest["content_sha256"],
    }
    storage.publish(out_dir, manifest)
    log.info("scored %s ds=%s: %d rows with %s", spec.name, ds, len(frame), models)
    return _reference(out_dir, manifest)


def _reference(directory: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(directory),
        "ds": manifest["ds"],
        "rows": manifest["rows"],
        "models": manifest["models"],
        "content_sha256": manifest["content_sha256"],
        "features_content_sha256": manifest["features_content_sha256"],
    }


def champion_scores(spec: PipelineSpec, ds: dt.date) -> Any:
    """The champion's predictions for the day, aligned with the feature partition's row order."""
    frame = storage.read_partition_frame(storage.partition_dir(PREDICTIONS, spec.name, ds))
    return frame.loc[frame["model_role"] == CHAMPION, "prediction"].to_numpy()
