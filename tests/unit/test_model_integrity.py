"""Model integrity: the served model holds no pickle, its files' hashes are recorded at training, and every
Evergreen load (gates, scoring, drift) refuses a model whose files changed, without running any of it."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from evergreen import monitoring, registry, settings, tracking
from evergreen.errors import IntegrityError
from evergreen.evaluation import evaluate_challenger
from evergreen.training.train import train_challenger
from evergreen.training.window import select_window
from helpers import START, configure_mlflow, publish_days, small_spec
from mlflow import MlflowClient

T0 = dt.datetime(2026, 10, 15, 3, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A promoted champion (v1) and a second, not yet evaluated challenger run on the same window."""
    base = tmp_path_factory.mktemp("integrity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.STORAGE_ROOT, str(base / "storage"))
        mp.setenv(settings.CAS_SETTLE_SECONDS, "0")
        spec = small_spec()
        configure_mlflow(mp, base, spec.name)
        days = publish_days(spec, START, 14)
        window = select_window(spec, days[-1])
        first = train_challenger(spec, window, lineage={"reason": "test"})
        decision = registry.promote_if_better(spec, first["run_id"], evaluate_challenger(spec, first["run_id"]),
                                              dry_run=False, actor="test", decided_at=T0)
        assert decision["kind"] == "promoted" and decision["version"] == "1"
        second = train_challenger(spec, window, lineage={"reason": "test"})
        model_id = first["model_uri"].removeprefix("models:/")  # MLflow 3: models:/m-<id>, a logged model
        model_dir = Path(mlflow.get_logged_model(model_id).artifact_location.removeprefix("file://"))
        yield {"spec": spec, "days": days, "model_dir": model_dir, "second_run": second["run_id"],
               "base": base}


@pytest.fixture
def tamper(champion: dict[str, Any]) -> Iterator[Any]:
    """Change a file of the champion's model in the artifact store; restored afterwards."""
    saved: list[tuple[Path, bytes]] = []

    def change(relative: str, data: bytes | None = None, append: bytes = b"") -> Path:
        path = champion["model_dir"] / relative
        saved.append((path, path.read_bytes()))
        path.write_bytes(data if data is not None else path.read_bytes() + append)
        return path

    yield change
    for path, original in reversed(saved):
        path.write_bytes(original)


def test_the_model_is_code_not_pickle(champion: dict[str, Any]) -> None:
    files = sorted(p.relative_to(champion["model_dir"]).as_posix() for p in champion["model_dir"].rglob("*")
                   if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert "model.py" in files and "artifacts/model.ubj" in files and "artifacts/feature_schema.json" in files
    assert "model_code_path" in (champion["model_dir"] / "MLmodel").read_text()


def test_hashes_are_recorded_on_run_and_version(champion: dict[str, Any]) -> None:
    spec = champion["spec"]
    version = MlflowClient().get_model_version(spec.registered_model_name, "1")
    recorded = json.loads(version.tags[tracking.Tag.MODEL_SHA256])
    assert recorded == tracking.file_hashes(champion["model_dir"])
    run_tags = MlflowClient().get_run(version.run_id).data.tags
    assert json.loads(run_tags[tracking.Tag.MODEL_SHA256]) == recorded


def test_untouched_champion_loads_and_pickles_are_refused(champion: dict[str, Any]) -> None:
    model = registry.load_version(champion["spec"], "1")
    assert model.metadata.get_input_schema() is not None
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"


def test_a_changed_booster_is_refused_by_every_load(champion: dict[str, Any], tamper: Any) -> None:
    spec = champion["spec"]
    booster = champion["model_dir"] / "artifacts" / "model.ubj"
    tamper("artifacts/model.ubj", data=booster.read_bytes()[: len(booster.read_bytes()) // 2])
    with pytest.raises(IntegrityError, match=r"artifacts/model\.ubj does not match its recorded sha256"):
        registry.load_version(spec, "1")
    # The gates re-score the champion: a tampered one stops the evaluation instead of being compared.
    with pytest.raises(IntegrityError, match=r"models:/fraud/1: artifacts/model\.ubj"):
        evaluate_challenger(spec, champion["second_run"])
    # Batch scoring (and so the drift monitor) loads the champion the same way.
    with pytest.raises(IntegrityError, match=r"artifacts/model\.ubj"):
        monitoring.score_partition(spec, champion["days"][-1])


def test_changed_model_code_is_never_run(champion: dict[str, Any], tamper: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    tamper("model.py", append=f"\nopen({str(marker)!r}, 'w').write('ran')\n".encode())
    with pytest.raises(IntegrityError, match=r"model\.py does not match"):
        registry.load_version(champion["spec"], "1")
    assert not marker.exists()


def test_added_and_missing_files_are_refused(champion: dict[str, Any], tmp_path: Path) -> None:
    spec = champion["spec"]
    extra = champion["model_dir"] / "artifacts" / "extra.py"
    extra.write_text("print('hi')\n")
    try:
        with pytest.raises(IntegrityError, match=r"artifacts/extra\.py was added"):
            registry.load_version(spec, "1")
    finally:
        extra.unlink()
    schema = champion["model_dir"] / "artifacts" / "feature_schema.json"
    kept = tmp_path / "feature_schema.json"
    shutil.move(schema, kept)
    try:
        with pytest.raises(IntegrityError, match=r"artifacts/feature_schema\.json is missing"):
            registry.load_version(spec, "1")
    finally:
        shutil.move(kept, schema)
    registry.load_version(spec, "1")  # restored: loads again


def test_a_version_without_recorded_hashes_is_not_loaded(champion: dict[str, Any]) -> None:
    spec = champion["spec"]
    client = MlflowClient()
    recorded = client.get_model_version(spec.registered_model_name, "1").tags[tracking.Tag.MODEL_SHA256]
    client.delete_model_version_tag(spec.registered_model_name, "1", tracking.Tag.MODEL_SHA256)
    try:
        with pytest.raises(IntegrityError, match="no recorded artifact hashes"):
            registry.load_version(spec, "1")
    finally:
        client.set_model_version_tag(spec.registered_model_name, "1", tracking.Tag.MODEL_SHA256, recorded)


def test_the_monitor_loads_the_champion_once_per_run(champion: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec, days = champion["spec"], champion["days"][-4:]
    loads: list[str] = []
    references: list[str] = []
    real_load, real_reference = registry.load_version, monitoring.load_champion_reference

    def counting_load(spec_: Any, version: str, client: Any = None) -> Any:
        loads.append(str(version))
        return real_load(spec_, version, client)

    def counting_reference(spec_: Any) -> Any:
        reference = real_reference(spec_)
        references.append(reference.version)
        return reference

    monkeypatch.setattr(registry, "load_version", counting_load)
    monkeypatch.setattr(monitoring, "load_champion_reference", counting_reference)
    results = monitoring.monitor_partitions(spec, days)
    assert [r["ds"] for r in results] == [d.isoformat() for d in days]
    assert all(r["written"] and r["champion_version"] == "1" for r in results)
    assert references == ["1"]
    assert sorted(loads) == sorted(monitoring.scoring_models(spec).values())  # each serving version once
    assert monitoring.monitor_partitions(spec, []) == []


def test_a_bad_day_does_not_hold_back_the_other_reports(champion: dict[str, Any]) -> None:
    from evergreen.errors import DataQualityError

    spec, days = champion["spec"], champion["days"][-8:-5]
    bad_dir = champion["base"] / "storage" / "features" / spec.name / f"ds={days[0].isoformat()}"
    data_file = next(bad_dir.glob("part-*.parquet"))
    original = data_file.read_bytes()
    data_file.write_bytes(original[:-16])  # truncated after publication
    try:
        with pytest.raises(DataQualityError, match=rf"(?s)1 of 3 days .*ds={days[0]}: .*manifest hash"):
            monitoring.monitor_partitions(spec, days)
    finally:
        data_file.write_bytes(original)
    assert monitoring.read_drift_report(spec, days[0]) is None
    assert all(monitoring.read_drift_report(spec, d) is not None for d in days[1:])
