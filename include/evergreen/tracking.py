"""MLflow tracking: experiments, the lineage tags every stage reads and writes, datasets, plots, models.

Training, evaluation and the registry talk to each other through the tags and artifacts named here
(:class:`Tag`, ``*_ARTIFACT``): nowhere else spells them. MLflow is imported inside the functions, so
the names can be imported cheaply.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from evergreen import __version__, layout, settings, storage
from evergreen.spec import FeatureType, PipelineSpec, TaskType

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


class TrainingWindow(Protocol):
    """What tracking reads of a training window (``evergreen.training.window.TrainingWindow``); a protocol,
    so tracking, below training, never imports it."""

    as_of: dt.date
    start: dt.date
    data_digest: str
    content_hashes: dict[str, str]
    train_days: list[dt.date]
    validation_days: list[dt.date]
    holdout_days: list[dt.date]

    @property
    def partitions_summary(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


MAX_TAG = 5000  # MLflow's limit on a tag value, in characters
DATASET_LOG_ROWS = 1_000  # rows per split handed to mlflow.data (schema + a glimpse), not the whole split
PLOT_MAX_POINTS = 200_000

# Artifacts of a challenger run.
HOLDOUT_ARTIFACT = "holdout/holdout.parquet"  # the holdout rows with the challenger's scores
HOLDOUT_PREDICTION_COLUMN = "prediction"
GATES_ARTIFACT = "gates/gates.json"
PROFILE_ARTIFACT = "reference_profile.json"
WINDOW_ARTIFACT = "window.json"
FEATURE_SCHEMA_ARTIFACT = "feature_schema.json"
STEPS_ARTIFACT = "training_steps.json"
SHAP_ARTIFACT = "explanations/shap_summary.json"  # mean |SHAP| per feature on the holdout
DATA_FACTS_ARTIFACT = "model_card/data_facts.json"  # limitations measured on the window (model cards)
MODEL_ARTIFACT = "model"


class Tag:
    """Run, model-version and dataset tag names."""

    PREFIX = "evergreen."
    SPEC = "evergreen.spec"
    AS_OF = "evergreen.as_of"
    DATA_DIGEST = "evergreen.data_digest"
    PARTITIONS = "evergreen.partitions"
    LABELS_AS_OF = "evergreen.labels_as_of"  # late labels: the day whose label book the run trained on
    CODE_VERSION = "evergreen.code_version"
    ROLE = "evergreen.role"  # challenger | baseline
    CHALLENGER_RUN_ID = "evergreen.challenger_run_id"  # on the baseline run
    CANDIDATE = "evergreen.candidate"  # on a model version: xgboost | baseline
    MODEL_URI = "evergreen.model_uri"
    MODEL_SHA256 = "evergreen.model_sha256"  # {artifact file: sha256} of the logged model, checked on load
    BASELINE_RUN_ID = "evergreen.baseline_run_id"
    GATES_PASSED = "evergreen.gates_passed"
    DECISION = "evergreen.decision"
    REJECTION_REASONS = "evergreen.rejection_reasons"
    DECIDED_AT = "evergreen.decided_at"
    DECIDED_BY = "evergreen.decided_by"
    RUN_ID = "evergreen.run_id"
    PRIMARY_METRIC = "evergreen.primary_metric"
    PRIMARY_METRIC_VALUE = "evergreen.primary_metric_value"
    CHAMPION_EVALUATED_AGAINST = "evergreen.champion_evaluated_against"
    GATE_PREFIX = "evergreen.gate."
    ROLLBACK_REASON = "evergreen.rollback_reason"
    ROLLED_BACK_AT = "evergreen.rolled_back_at"
    DIGEST = "evergreen.digest"  # dataset inputs
    ROWS = "evergreen.rows"  # dataset inputs
    # Tags on a run that describe its own lifecycle, not its lineage: not copied onto the model version.
    NOT_LINEAGE = frozenset({ROLE, DECISION, REJECTION_REASONS, DECIDED_AT})


def truncate(value: Any) -> str:
    """A tag value MLflow accepts."""
    return str(value)[:MAX_TAG]


def code_version() -> str:
    """Package version, plus the git sha from ``EVERGREEN_CODE_VERSION`` when the deployment sets it."""
    extra = settings.current().code_version
    return f"{__version__}+{extra}" if extra else __version__


def ensure_experiment(name: str) -> str:
    """The experiment id for ``name``, created if missing (tolerating a concurrent creator)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Without a tracking server, MLflow would put artifacts in ./mlruns of whatever the cwd is.
    artifact_root = settings.current().mlflow_artifact_root
    try:
        return mlflow.create_experiment(name, artifact_location=f"{artifact_root}/{name}" if artifact_root else None)
    except MlflowException:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def lineage_tags(lineage: Mapping[str, Any]) -> dict[str, str]:
    """``{key: value}`` as ``evergreen.<key>`` tags (non-strings as canonical JSON)."""
    tags: dict[str, str] = {}
    for key, value in lineage.items():
        name = key if key.startswith(Tag.PREFIX) else f"{Tag.PREFIX}{key}"
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        tags[name] = truncate(text)
    return tags


def split_digest(window: TrainingWindow, days: list[dt.date]) -> str:
    return storage.data_digest({d.isoformat(): window.content_hashes.get(d.isoformat(), "") for d in days})


def plot_subset(n: int) -> np.ndarray | slice:
    """Evenly spaced positions (deterministic) when there are more points than a plot needs."""
    import numpy as np

    if n <= PLOT_MAX_POINTS:
        return slice(None)
    return np.linspace(0, n - 1, PLOT_MAX_POINTS).astype(np.int64)


def download_json(run_id: str, artifact_path: str) -> Any:
    """A JSON artifact of a run."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        return json.loads(Path(local).read_text(encoding="utf-8"))


def download_holdout(run_id: str) -> pd.DataFrame:
    """The holdout rows a challenger run logged (with its scores in ``HOLDOUT_PREDICTION_COLUMN``)."""
    import mlflow
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=HOLDOUT_ARTIFACT, dst_path=tmp)
        return pd.read_parquet(Path(local))


def model_uri_of(run_id: str, tags: Mapping[str, str]) -> str:
    """The logged model of a challenger run."""
    return tags.get(Tag.MODEL_URI) or f"runs:/{run_id}/{MODEL_ARTIFACT}"


def log_dataset(spec: PipelineSpec, window: TrainingWindow, frame: pd.DataFrame, days: list[dt.date],
                 context: str, rows: int | None = None) -> None:
    """Log a split as an MLflow dataset input whose source lists the partition URIs it came from.

    ``frame`` only gives the schema (and a glimpse): pass a few rows, and the split's size as ``rows``.
    """
    import mlflow
    from mlflow.data.dataset_source import DatasetSource

    uris = [str(storage.partition_dir(layout.FEATURES, spec.name, d)) for d in days]
    digest = split_digest(window, days)

    class _Partitions(DatasetSource):
        # Not registered with MLflow: it only has to describe where the rows came from.
        @staticmethod
        def _get_source_type() -> str:
            return "evergreen_partitions"

        def load(self) -> Any:
            raise NotImplementedError("read the partitions with evergreen.training.window.load_day")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> Any:
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return {"uri": str(storage.at(layout.zone(layout.FEATURES, spec.name))), "partitions": uris}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> Any:
            return cls()

    with warnings.catch_warnings():
        # Schema inference hints (int target, tz-aware timestamps) are noise for a logged-only dataset.
        warnings.simplefilter("ignore")
        dataset = mlflow.data.from_pandas(
            frame, source=_Partitions(), targets=spec.target.name, name=f"{spec.name}-{context}",
            digest=digest[:32],  # MLflow caps dataset digests at 36 characters
        )
        first_last = f"{days[0]}..{days[-1]}" if days else "(none)"
        mlflow.log_input(dataset, context=context,
                         tags={Tag.PARTITIONS: f"{first_last} ({len(days)} days)",
                               Tag.DIGEST: digest,
                               Tag.ROWS: str(len(frame) if rows is None else rows)})


def plot_shap_importance(summary: Mapping[str, Any], title: str, path: Path) -> None:
    """Mean |SHAP| per feature on the holdout (:func:`evergreen.explain.attribution_summary`), a bar each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted((summary.get("mean_abs_shap") or {}).items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel(f"mean |SHAP| on {summary.get('rows')} holdout rows (margin units)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_explanations(attributions: Mapping[str, Any], title: str, tmp: Path) -> None:
    """The active run's SHAP summary (JSON, what model cards and drift read) and its plot."""
    import mlflow

    mlflow.log_dict(dict(attributions), SHAP_ARTIFACT)
    plot_shap_importance(attributions, title, tmp / "shap_importance.png")
    mlflow.log_artifact(str(tmp / "shap_importance.png"), "plots")
    (tmp / "shap_importance.png").unlink()


def plot_performance(task_type: TaskType, y: np.ndarray, pred: np.ndarray, baseline: np.ndarray,
                      path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    if task_type == TaskType.BINARY_CLASSIFICATION and len(np.unique(y)) == 2:
        for label, scores in (("challenger", pred), ("baseline", baseline)):
            fpr, tpr, _ = roc_curve(y, scores)
            precision, recall, _ = precision_recall_curve(y, scores)
            axes[0].plot(fpr, tpr, label=label)
            axes[1].plot(recall, precision, label=label)
        axes[0].plot([0, 1], [0, 1], "k--", linewidth=0.8)
        axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (holdout)")
        axes[1].set(xlabel="recall", ylabel="precision", title="Precision-recall (holdout)")
        for ax in axes:
            ax.legend()
    else:
        residuals = y - pred
        axes[0].scatter(pred, residuals, s=4, alpha=0.4)
        axes[0].axhline(0.0, color="k", linewidth=0.8)
        axes[0].set(xlabel="prediction", ylabel="residual", title="Residuals vs prediction (holdout)")
        axes[1].hist(residuals, bins=40)
        axes[1].set(xlabel="residual", title="Residual distribution (holdout)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def model_signature(spec: PipelineSpec) -> Any:
    """Explicit signature from the spec (not inferred from a sample, which would guess optionality).

    MLflow's enforcement accepts missing values in double and string columns, not in boolean ones.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    mlflow_type = {FeatureType.NUMERIC: "double", FeatureType.CATEGORICAL: "string", FeatureType.BOOLEAN: "boolean"}
    inputs = Schema([ColSpec(mlflow_type[kind], name) for name, kind in spec.model_features.items()])
    outputs = Schema([TensorSpec(np.dtype("float64"), (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; listed explicitly because inferring them costs seconds."""
    import mlflow
    import numpy as np
    import pandas as pd
    import sklearn
    import xgboost as xgb

    return [
        f"mlflow=={mlflow.__version__}",
        f"xgboost=={xgb.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        f"scikit-learn=={sklearn.__version__}",
    ]


BOOSTER_FILE = "model.ubj"
LINEAR_FILE = "linear_model.json"


def log_model(spec: PipelineSpec, code_path: Path, schema: Any, example: pd.DataFrame, data_digest: str,
              workdir: Path, *, booster: Any = None, linear: Mapping[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """Log a served pyfunc in the active run as models from code (``code_path``; the XGBoost ``booster`` as
    ``.ubj`` or the ``linear`` baseline's parameters as JSON, and the feature schema as JSON; no pickle).
    Returns its URI and the sha256 of every file of the logged model."""
    import mlflow

    if (booster is None) == (linear is None):
        raise ValueError("log_model needs exactly one of booster and linear")
    model_dir = workdir / ("linear" if linear is not None else "booster")
    model_dir.mkdir(parents=True, exist_ok=True)
    schema_path = model_dir / FEATURE_SCHEMA_ARTIFACT
    schema_path.write_text(json.dumps(schema.to_dict(), sort_keys=True), encoding="utf-8")
    artifacts = {"feature_schema": str(schema_path)}
    if linear is not None:
        linear_path = model_dir / LINEAR_FILE
        linear_path.write_text(json.dumps(dict(linear), sort_keys=True), encoding="utf-8")
        artifacts["linear"] = str(linear_path)
    else:
        booster_path = model_dir / BOOSTER_FILE
        booster.save_model(str(booster_path))
        artifacts["booster"] = str(booster_path)
    info = mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        python_model=str(code_path),
        artifacts=artifacts,
        signature=model_signature(spec),
        input_example=example,
        pip_requirements=pip_requirements(),
        metadata={Tag.SPEC: spec.name, Tag.DATA_DIGEST: data_digest},
    )
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=tmp)
        manifest = file_hashes(Path(local))
    return info.model_uri, manifest


def model_tags(model_uri: str, manifest: Mapping[str, str]) -> dict[str, str]:
    """The tags that let the registry find a run's model and verify it on load."""
    manifest_json = json.dumps(dict(manifest), sort_keys=True, separators=(",", ":"))
    if len(manifest_json) > MAX_TAG:
        raise ValueError(f"the model's artifact manifest ({len(manifest_json)} chars) exceeds a tag")
    return {Tag.MODEL_URI: model_uri, Tag.MODEL_SHA256: manifest_json}


# Written by the MLflow client itself when it downloads a registered version (name and version, not
# fetched from the artifact store), so never part of what was logged.
DOWNLOAD_METADATA = frozenset({"registered_model_meta"})


def file_hashes(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory``."""
    return {path.relative_to(directory).as_posix(): storage.sha256_bytes(path.read_bytes())
            for path in sorted(directory.rglob("*"))
            if path.is_file() and path.relative_to(directory).as_posix() not in DOWNLOAD_METADATA}


def model_manifest(tags: Mapping[str, str], where: str) -> dict[str, str]:
    """The artifact hashes recorded at training (a run's or a model version's tags)."""
    from evergreen.errors import IntegrityError

    raw = tags.get(Tag.MODEL_SHA256)
    if not raw:
        raise IntegrityError(f"{where} has no recorded artifact hashes ({Tag.MODEL_SHA256}): it cannot be "
                             "verified, so it is not loaded; retrain it")
    return json.loads(raw)


def load_verified_model(model_uri: str, manifest: Mapping[str, str]) -> Any:
    """Download the model, check every file against ``manifest``, then load the checked copy (so what runs
    is what was checked). Raises IntegrityError naming the first file that differs, is missing or extra."""
    import mlflow

    from evergreen.errors import IntegrityError

    settings.forbid_pickled_models()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        found = file_hashes(local)
        for name in sorted(set(manifest) | set(found)):
            if name not in found:
                raise IntegrityError(f"{model_uri}: {name} is missing from the model")
            if name not in manifest:
                raise IntegrityError(f"{model_uri}: {name} was added to the model after training")
            if found[name] != manifest[name]:
                raise IntegrityError(f"{model_uri}: {name} does not match its recorded sha256 (tampered or "
                                     "corrupted): not loaded")
        return mlflow.pyfunc.load_model(str(local))


def log_challenger_run(spec: PipelineSpec, window: TrainingWindow, *, lineage: Mapping[str, Any],
                       params: Mapping[str, Any], streaming: bool, fitted: Any, holdout: Any,
                       metrics: Mapping[str, float], baseline_metrics: Mapping[str, float],
                       baseline: Mapping[str, Any], profile: Mapping[str, Any], baseline_profile: Mapping[str, Any],
                       steps: Any, model_code: Path, data_facts: Mapping[str, Any]) -> dict[str, str]:
    """One challenger run with a nested baseline run: params, metrics, datasets, plots, the holdout, each
    model's reference profile and each model (``model_code``: their code file), so either can be registered;
    ``data_facts``: what the model cards report as measured limitations (:mod:`evergreen.model_card`).
    Returns ``{run_id, baseline_run_id, model_uri, baseline_model_uri, experiment_id}``."""
    import mlflow

    experiment_id = ensure_experiment(spec.name)
    common_tags = {
        Tag.SPEC: spec.name,
        Tag.AS_OF: window.as_of.isoformat(),
        Tag.DATA_DIGEST: window.data_digest,
        Tag.PARTITIONS: window.partitions_summary,
        **({Tag.LABELS_AS_OF: window.labels_as_of.isoformat()} if window.labels_as_of else {}),
        Tag.CODE_VERSION: code_version(),
        **lineage_tags(lineage),
    }
    schema, sample, glimpse = fitted.schema, fitted.sample, fitted.valid_glimpse
    holdout_frame = holdout.frame
    window_params = {
        "window.days": (window.as_of - window.start).days + 1,
        "window.holdout_days": spec.window.holdout_days,
        "window.validation_days": spec.window.validation_days,
        "window.max_rows_per_day": spec.window.max_rows_per_day,
        "rows.train": fitted.rows_train, "rows.validation": fitted.rows_valid, "rows.holdout": len(holdout_frame),
        "rows.baseline_sample": len(sample),
        "training.streaming": streaming,
    }
    feature_names = list(schema.columns)
    example = holdout_frame[feature_names].head(5).reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{spec.name}-{window.as_of}-challenger",
                              tags={**common_tags, Tag.ROLE: "challenger"}) as run:
            run_id = run.info.run_id
            with mlflow.start_run(experiment_id=experiment_id, nested=True,
                                  run_name=f"{spec.name}-{window.as_of}-baseline",
                                  tags={**common_tags, Tag.ROLE: "baseline",
                                        Tag.CHALLENGER_RUN_ID: run_id}) as baseline_run:
                baseline_run_id = baseline_run.info.run_id
                mlflow.log_params({**window_params, "model.kind": baseline["estimator"]})
                mlflow.log_metrics(dict(baseline_metrics))
                mlflow.log_dict(dict(baseline_profile), PROFILE_ARTIFACT)
                log_explanations(baseline_profile["attributions"], "Linear baseline: mean |SHAP| per feature (holdout)",
                                 tmp)
                baseline_uri, baseline_manifest = log_model(spec, model_code, schema, example, window.data_digest,
                                                            tmp, linear=baseline)
                mlflow.set_tags(model_tags(baseline_uri, baseline_manifest))

            mlflow.log_params({
                **window_params,
                **{f"xgb.{k}": v for k, v in params.items()},
                "num_boost_round": spec.model.num_boost_round,
                "early_stopping_rounds": spec.model.early_stopping_rounds,
                "features": ",".join(feature_names),
            })
            mlflow.log_metrics({**metrics, **{f"validation_{k}": v for k, v in fitted.validation_metrics.items()},
                                "best_iteration": fitted.best_iteration})
            # Datasets: the schema and a glimpse of each split (the rows themselves are the partitions).
            for frame, rows, days, context in ((sample, fitted.rows_train, window.train_days, "train"),
                                               (glimpse, fitted.rows_valid, window.validation_days, "validation"),
                                               (holdout_frame, len(holdout_frame), window.holdout_days, "holdout")):
                log_dataset(spec, window, frame.head(DATASET_LOG_ROWS), days, context, rows=rows)
            mlflow.log_dict(window.to_dict(), WINDOW_ARTIFACT)
            mlflow.log_dict(dict(data_facts), DATA_FACTS_ARTIFACT)
            mlflow.log_dict(schema.to_dict(), FEATURE_SCHEMA_ARTIFACT)

            log_explanations(profile["attributions"], "XGBoost: mean |SHAP| per feature (holdout)", tmp)
            shown = plot_subset(len(holdout.y))
            plot_performance(spec.task_type, holdout.y[shown], holdout.challenger[shown], holdout.baseline[shown],
                             tmp / "holdout_performance.png")
            mlflow.log_artifact(str(tmp / "holdout_performance.png"), "plots")

            # The holdout (with the challenger's scores) lets evaluation re-score any model on identical rows.
            holdout_frame[HOLDOUT_PREDICTION_COLUMN] = holdout.challenger
            holdout_path = tmp / Path(HOLDOUT_ARTIFACT).name
            holdout_path.write_bytes(storage.frame_to_parquet_bytes(holdout_frame))
            mlflow.log_artifact(str(holdout_path), str(Path(HOLDOUT_ARTIFACT).parent))
            holdout_path.unlink()
            mlflow.log_dict(dict(profile), PROFILE_ARTIFACT)

            model_uri, manifest = log_model(spec, model_code, schema, example, window.data_digest, tmp,
                                            booster=fitted.booster)
            mlflow.set_tags({**model_tags(model_uri, manifest), Tag.BASELINE_RUN_ID: baseline_run_id})
            steps.mark("mlflow_logging")
            mlflow.log_dict(steps.to_dict(), STEPS_ARTIFACT)
    return {"run_id": run_id, "baseline_run_id": baseline_run_id, "model_uri": model_uri,
            "baseline_model_uri": baseline_uri, "experiment_id": experiment_id}
