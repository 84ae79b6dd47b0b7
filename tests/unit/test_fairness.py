"""The fairness gate: fairlearn's group metrics on the holdout, the gate's verdicts, the spec's rules, a
model that must be rejected because it treats a group (which it never sees) differently; and the model
card of the one that is registered."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml
from evergreen import settings
from evergreen.evaluation import NOT_EVALUATED, evaluate_challenger, evaluate_gates, fairness_metrics
from evergreen.registry import promote_if_better
from evergreen.spec import (
    SHIPPED_SPECS_DIR,
    FairnessGateSpec,
    FeatureSpec,
    PipelineSpec,
    SpecError,
    load_spec,
)
from evergreen.training.train import train_challenger
from evergreen.training.window import select_window
from helpers import START, configure_mlflow, make_feature_day, publish_day, small_spec

T0 = dt.datetime(2026, 10, 15, 3, 0, tzinfo=dt.UTC)


def with_fairness(spec: PipelineSpec, **gate: Any) -> PipelineSpec:
    return spec.model_copy(update={"gates": spec.gates.model_copy(update={"fairness": FairnessGateSpec(**gate)})})


def test_group_metrics_match_hand_counts() -> None:
    spec = with_fairness(small_spec(), attribute="channel", metric="demographic_parity_difference", max=0.1,
                         min_group_rows=3)
    groups = ["a"] * 4 + ["b"] * 4 + ["c"] * 2  # c is too small to count
    y_true = [1, 0, 1, 0, 1, 0, 1, 0, 1, 1]
    scores = [0.9, 0.8, 0.7, 0.1, 0.9, 0.2, 0.3, 0.1, 0.9, 0.9]  # selected: a 3/4, b 1/4
    out = fairness_metrics(spec, groups, y_true, scores)
    assert out["value"] == pytest.approx(0.5) and out["passed"] is False
    assert out["excluded_groups"] == {"c": 2}
    assert out["groups"]["a"] == {"rows": 4, "selection_rate": 0.75, "true_positive_rate": 1.0,
                                  "false_positive_rate": 0.5}
    assert out["groups"]["b"]["true_positive_rate"] == 0.5 and out["groups"]["b"]["false_positive_rate"] == 0.0
    ratio = fairness_metrics(with_fairness(spec, attribute="channel", metric="demographic_parity_ratio", min=0.8,
                                           min_group_rows=3), groups, y_true, scores)
    assert ratio["value"] == pytest.approx(1 / 3) and ratio["passed"] is False and ratio["bound"] == "min"
    odds = fairness_metrics(with_fairness(spec, attribute="channel", metric="equalized_odds_difference", max=0.6,
                                          min_group_rows=3), groups, y_true, scores)
    assert odds["value"] == pytest.approx(0.5) and odds["passed"] is True  # max(|1-0.5|, |0.5-0|)
    lonely = fairness_metrics(spec, ["a"] * 9 + ["b"], y_true, scores)
    assert lonely["value"] is None and "need 2" in lonely["status"]


def test_regression_compares_mean_predictions() -> None:
    spec = small_spec("delivery_eta")
    spec = with_fairness(spec, attribute=spec.features[0].name, metric="mean_prediction_difference", max=5.0,
                         min_group_rows=2)
    out = fairness_metrics(spec, ["x", "x", "y", "y"], [30, 31, 40, 41], [30.0, 32.0, 40.0, 44.0])
    assert out["value"] == pytest.approx(11.0) and out["passed"] is False
    assert out["groups"]["y"]["mean_prediction"] == pytest.approx(42.0)


def test_gate_passes_fails_and_is_never_a_pass_when_undecidable() -> None:
    spec = with_fairness(small_spec(), attribute="channel", metric="demographic_parity_difference", max=0.1)
    metrics = {"roc_auc": 0.9, "pr_auc": 0.5}
    judged = {value: evaluate_gates(spec, metrics, {"roc_auc": 0.8}, None, {}, 2,
                                    fairness={"value": value, "groups": {"a": {}, "b": {}}}) for value in (0.05, 0.2)}
    fair = [g for g in judged[0.05].gates if g.name == "fairness:demographic_parity_difference"]
    assert len(fair) == 1 and fair[0].passed and fair[0].threshold == 0.1
    assert "fairness:demographic_parity_difference" in judged[0.2].to_dict()["failed"]
    undecided = evaluate_gates(spec, metrics, {"roc_auc": 0.8}, None, {}, 2,
                               fairness={"value": None, "status": "1 channel group(s) with >= 50 rows, need 2"})
    gate = next(g for g in undecided.gates if g.name.startswith("fairness:"))
    assert gate.status == NOT_EVALUATED and not undecided.passed and "need 2" in gate.detail


def _spec_data(**gate: Any) -> dict[str, Any]:
    data = yaml.safe_load((SHIPPED_SPECS_DIR / "fraud.yaml").read_text())
    data["features"].append({"name": "segment", "type": "categorical", "use": "attribute", "nullable": False})
    data["gates"]["fairness"] = gate
    return data


def test_spec_rules(tmp_path: Path) -> None:
    spec = PipelineSpec.model_validate(_spec_data(attribute="segment", metric="demographic_parity_ratio", min=0.8))
    assert "segment" not in spec.model_features and spec.attribute_columns == ["segment"]
    assert spec.feature_table_columns[-2:] == ["segment", "is_fraud"]
    for gate, message in (({"attribute": "segment", "metric": "demographic_parity_ratio", "max": 0.1}, "give min"),
                          ({"attribute": "segment", "metric": "equalized_odds_difference"}, "give max"),
                          ({"attribute": "nope", "metric": "equalized_odds_difference", "max": 0.1}, "not a feature"),
                          ({"attribute": "segment", "metric": "mean_prediction_difference", "max": 1},
                           "does not apply")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(_spec_data(**gate)))
        with pytest.raises(SpecError, match=message):
            load_spec(path)


def attribute_spec(name: str, *, max_difference: float) -> PipelineSpec:
    """The small fraud spec with a ``segment`` attribute (not a model input) and a parity gate on it."""
    spec = small_spec()
    spec = spec.model_copy(update={
        "features": [*spec.features, FeatureSpec(name="segment", type="categorical", use="attribute", nullable=False)],
        "model": spec.model.model_copy(update={"registered_name": name}),
        "gates": spec.gates.model_copy(update={"absolute": {}, "min_lift_over_baseline": -1.0,
                                               "min_slice_metric": None, "max_slice_gap": None}),
    })
    return with_fairness(spec, attribute="segment", metric="demographic_parity_difference", max=max_difference,
                         threshold=0.3, min_group_rows=100)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two trainings on 14 days where ``segment`` follows the channel (``web`` is A), which the model's
    scores depend on, and on the same days with ``segment`` drawn at random."""
    base = tmp_path_factory.mktemp("fairness")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.CAS_SETTLE_SECONDS, "0.05")
        configure_mlflow(mp, base, "fraud")
        out = {}
        for kind in ("biased", "random"):
            mp.setenv(settings.STORAGE_ROOT, str(base / kind))
            spec = attribute_spec(f"fraud_fairness_{kind}", max_difference=0.1)
            for i in range(14):
                ds = START + dt.timedelta(days=i)
                frame = make_feature_day(spec, ds)
                rng = np.random.default_rng(ds.toordinal())
                frame["segment"] = (np.where(frame["channel"] == spec.feature("channel").allowed_values[0], "A", "B")
                                    if kind == "biased" else rng.choice(["A", "B"], size=len(frame)))
                frame["segment"] = frame["segment"].astype("str")
                if kind == "random" and i >= 11:  # the holdout days bring a channel training never saw
                    frame.loc[frame.index % 20 == 0, "channel"] = "kiosk"
                publish_day(spec, ds, frame[spec.feature_table_columns])
            trained = train_challenger(spec, select_window(spec, START + dt.timedelta(days=13)),
                                       lineage={"reason": "test"})
            report = evaluate_challenger(spec, trained["run_id"])
            decision = promote_if_better(spec, trained["run_id"], report, dry_run=False, actor="test", decided_at=T0)
            out[kind] = {"spec": spec, "trained": trained, "report": report, "decision": decision}
        yield out


def test_a_model_unfair_to_a_group_it_never_sees_is_rejected(trained: dict[str, Any]) -> None:
    biased = trained["biased"]
    fairness = biased["report"]["fairness"]
    assert set(fairness["groups"]) == {"A", "B"}
    rates = {g: m["selection_rate"] for g, m in fairness["groups"].items()}
    assert rates["A"] - rates["B"] == pytest.approx(fairness["value"])
    assert fairness["value"] > 0.1
    assert "fairness:demographic_parity_difference" in biased["report"]["failed"]
    decision = biased["decision"]
    assert decision["kind"] == "rejected"
    assert any(r.startswith("fairness:demographic_parity_difference") for r in decision["reasons"])
    # The attribute is stored and judged on, never a model input.
    model = mlflow.pyfunc.load_model(biased["trained"]["model_uri"])
    assert "segment" not in model.metadata.get_input_schema().input_names()


def test_the_same_model_task_passes_when_the_groups_are_treated_alike(trained: dict[str, Any]) -> None:
    fair = trained["random"]
    assert fair["report"]["fairness"]["value"] < 0.1
    gate = next(g for g in fair["report"]["gates"] if g["name"] == "fairness:demographic_parity_difference")
    assert gate["status"] == "passed"
    assert fair["decision"]["kind"] == "promoted"


def test_the_registered_version_has_a_model_card(trained: dict[str, Any]) -> None:
    fair = trained["random"]
    spec, decision, client = fair["spec"], fair["decision"], mlflow.MlflowClient()
    version = client.get_model_version(spec.registered_model_name, decision["version"])
    card = version.description
    assert card.startswith(f"# Model card: {spec.registered_model_name} version {decision['version']}")
    for section in ("## Intended use", "## Training data", "## Performance on the holdout", "## Gates",
                    "## Fairness", "## What drives it", "## Known limitations", "## Lineage"):
        assert section in card
    assert spec.description in card and f"Owner: {spec.owner}" in card
    assert f"Data digest: `{fair['trained']['data_digest']}`" in card
    report = fair["report"]
    assert f"| roc_auc | {report['challenger_metrics']['roc_auc']:.4f} | {report['baseline_metrics']['roc_auc']:.4f} " \
           f"| none |" in card
    assert f"**{report['fairness']['value']:.4f}** (ok)" in card
    shap = mlflow.artifacts.load_dict(f"runs:/{fair['trained']['run_id']}/explanations/shap_summary.json")
    top = next(iter(shap["mean_abs_shap"]))
    assert f"| {top} | {shap['mean_abs_shap'][top]:.4f} |" in card
    # Limitations measured from the data: 5% of the holdout's channel values are new.
    assert "of holdout rows have a `channel` value unseen in training ('kiosk'" in card
    assert f"Training run: `{fair['trained']['run_id']}`" in card
    run_id = fair["trained"]["run_id"]
    markdown = mlflow.artifacts.load_text(f"runs:/{run_id}/model_card/model_card.md")
    assert markdown == card
    page = mlflow.artifacts.load_text(f"runs:/{run_id}/model_card/model_card.html")
    assert "<h2>Fairness</h2>" in page and "<table>" in page
    assert decision["model_card"]["html"] == f"runs:/{run_id}/model_card/model_card.html"
    # The rejected model has no version, so no card; its run says why.
    assert trained["biased"]["decision"]["version"] is None
