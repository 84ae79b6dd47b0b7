"""Spec parsing: shipped specs load, user specs come from EVERGREEN_SPECS_DIR, errors name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from evergreen.cli import main as cli_main
from evergreen.spec import SHIPPED_SPECS_DIR, FeatureType, SpecError, TaskType, load_spec, load_specs


def _fraud_dict() -> dict:
    return yaml.safe_load((SHIPPED_SPECS_DIR / "fraud.yaml").read_text())


def test_shipped_specs_load_with_both_task_types() -> None:
    specs = load_specs()
    assert {"fraud", "delivery_eta"} <= set(specs)
    assert specs["fraud"].task_type == TaskType.BINARY_CLASSIFICATION
    assert specs["delivery_eta"].task_type == TaskType.REGRESSION
    assert specs["fraud"].primary_metric == "roc_auc"
    assert specs["delivery_eta"].primary_metric == "rmse"
    assert specs["fraud"].model_features["is_weekend"] == FeatureType.BOOLEAN
    assert specs["fraud"].raw_columns[:2] == ["transaction_id", "event_ts"]


def test_user_specs_folder_adds_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _fraud_dict() | {"name": "fraud_eu"}
    (tmp_path / "fraud_eu.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("EVERGREEN_SPECS_DIR", str(tmp_path))
    assert "fraud_eu" in load_specs()


def test_duplicate_spec_name_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(_fraud_dict()))
    with pytest.raises(SpecError, match="declared by both"):
        load_specs(str(tmp_path))


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"task_type": "clustering"}, "task_type", "binary_classification"),
        ({"source": {"kind": "daily_files", "path": "raw/x.parquet"}}, "source", "{ds}"),
        ({"window": {"days": 5, "min_days": 7}}, "window", "min_days"),
        ({"gates": {"slice_feature": "nope"}}, "(top level)", "slice_feature"),
        ({"schedule": {"start_date": "2026-01-01", "timezone": "Mars/Olympus"}}, "schedule.timezone", "unknown timezone"),
        ({"features": [{"name": "amount", "type": "numeric", "min": 5, "max": 1}]}, "features.0", "greater than max"),
    ],
)
def test_bad_spec_names_file_field_and_problem(tmp_path: Path, change: dict, field: str, message: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(_fraud_dict() | change))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    assert str(path) in text
    assert field in text
    assert message in text


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["specs", "validate"]) == 0
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    assert cli_main(["specs", "validate", "--dir", str(tmp_path)]) == 1
    assert "not valid YAML" in capsys.readouterr().err
