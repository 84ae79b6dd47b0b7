"""One malformed spec file is an import error naming file and field; every other spec's DAGs still load."""

from __future__ import annotations

from pathlib import Path

import pytest
from evergreen.spec import SHIPPED_SPECS_DIR, SpecError, get_spec, load_valid_specs
from helpers import REPO, spec_dag_ids

SHIPPED_DAGS = sorted([*spec_dag_ids("fraud"), *spec_dag_ids("delivery_eta")])


@pytest.fixture
def user_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    monkeypatch.setenv("EVERGREEN_SPECS_DIR", str(folder))
    # A typo in a user's spec (the probe of issue 11): `holdout_dayz` under `window`.
    text = (SHIPPED_SPECS_DIR / "fraud.yaml").read_text().replace("name: fraud\n", "name: fraud_typo\n", 1)
    assert "window:\n" in text
    (folder / "fraud_typo.yaml").write_text(text.replace("window:\n", "window:\n  holdout_dayz: 3\n", 1))
    # And a valid user spec beside it.
    good = (SHIPPED_SPECS_DIR / "fraud.yaml").read_text().replace("name: fraud\n", "name: fraud_eu\n", 1)
    (folder / "fraud_eu.yaml").write_text(good)
    return folder


def test_valid_specs_load_beside_an_invalid_one(user_specs: Path) -> None:
    specs, errors = load_valid_specs()
    assert sorted(specs) == ["delivery_eta", "fraud", "fraud_eu"]
    assert len(errors) == 1
    message = str(errors[0])
    assert str(user_specs / "fraud_typo.yaml") in message and "window.holdout_dayz" in message
    assert get_spec("fraud_eu").name == "fraud_eu"
    with pytest.raises(SpecError, match="holdout_dayz"):
        get_spec("fraud_typo")


def test_dagbag_builds_the_valid_dags_and_reports_the_invalid_spec(airflow_db: Path, user_specs: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    expected = sorted([*SHIPPED_DAGS, *spec_dag_ids("fraud_eu", outcomes=True)])  # a copy of fraud.yaml
    assert sorted(bag.dag_ids) == expected
    assert list(bag.import_errors) == [str(REPO / "dags" / "evergreen_spec_errors.py")]
    error = next(iter(bag.import_errors.values()))
    assert "1 invalid Evergreen spec file(s)" in error
    assert str(user_specs / "fraud_typo.yaml") in error and "window.holdout_dayz" in error


def test_no_error_without_invalid_specs(airflow_db: Path, user_specs: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    (user_specs / "fraud_typo.yaml").unlink()
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert len(bag.dag_ids) == 20  # three specs x six DAG kinds, and the outcomes of the two fraud ones
