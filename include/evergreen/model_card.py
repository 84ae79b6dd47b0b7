"""Model cards: one per registered model version, in Markdown and HTML, from what the pipeline measured.

A card says what the model is for (the spec's description and owner), what it learned from (window,
digest, label coverage), how good it is (holdout metrics overall and per slice, against the baseline and
the champion on the same rows), whether it is fair (the fairness gate), what drives it (mean |SHAP|),
what it does not know (limitations measured from the data, e.g. unseen categories, missing values, label
coverage) and where it came from (lineage). Training measures the data facts (:func:`data_facts`, logged
with the run as ``tracking.DATA_FACTS_ARTIFACT``); registration writes the card (:func:`publish_card`) as run artifacts and as the model
version's description, so the MLflow UI shows it where people look.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping
from typing import Any

from evergreen.spec import PipelineSpec, TaskType

CARD_MARKDOWN = "model_card/model_card.md"
CARD_HTML = "model_card/model_card.html"
DESCRIPTION_LIMIT = 5000  # characters MLflow's registry stores in a version description
UNSEEN_SHARE_NOTED = 0.01  # a categorical whose holdout has more unseen values than this is a limitation


def data_facts(spec: PipelineSpec, window: Any, categories: Mapping[str, list[str]], holdout: Any,
               *, rows_used: int) -> dict[str, Any]:
    """What the card reports as limitations, measured on the window and its holdout: per categorical the
    holdout rows whose value training never saw, per feature the holdout's missing share, the share of the
    window's rows that had a label, and the holdout's size and target balance."""
    import numpy as np

    from evergreen import layout, storage

    unseen: dict[str, Any] = {}
    for name, known in categories.items():
        values = holdout[name]
        present = values.notna()
        new = present & ~values.astype("object").map(str).isin(known)
        if new.any():
            counts = values[new].astype("object").map(str).value_counts()
            unseen[name] = {"rows": int(new.sum()), "share": float(new.mean()),
                            "values": {str(k): int(v) for k, v in counts.head(5).items()}}
    missing = {name: float(holdout[name].isna().mean()) for name in spec.model_features
               if name in holdout.columns and holdout[name].isna().any()}
    partition_rows = 0
    for ds in window.partitions:
        manifest = storage.read_manifest(storage.partition_dir(layout.FEATURES, spec.name, ds)) or {}
        partition_rows += int(manifest.get("rows", 0))
    y = holdout[spec.target.name].to_numpy(dtype="float64")
    target = ({"positive_share": float(np.mean(y))} if spec.task_type == TaskType.BINARY_CLASSIFICATION
              else {"mean": float(np.mean(y)), "std": float(np.std(y))}) if len(y) else {}
    return {
        "unseen_categories": unseen,
        "holdout_missing_share": missing,
        "label_coverage": {"partition_rows": partition_rows, "labelled_rows": int(rows_used),
                           "share": rows_used / partition_rows if partition_rows else None},
        "holdout": {"rows": int(len(holdout)), "days": [d.isoformat() for d in window.holdout_days], **target},
        "missing_days": [d.isoformat() for d in window.missing_days],
    }


def limitations(spec: PipelineSpec, facts: Mapping[str, Any], gate_report: Mapping[str, Any]) -> list[str]:
    """The card's "known limitations": sentences measured from the data, worst first where it matters."""
    out = []
    for name, found in sorted((facts.get("unseen_categories") or {}).items(), key=lambda kv: -kv[1]["share"]):
        if found["share"] >= UNSEEN_SHARE_NOTED:
            shown = ", ".join(f"{v!r} ({n})" for v, n in found["values"].items())
            out.append(f"{found['share']:.1%} of holdout rows have a `{name}` value unseen in training ({shown}): "
                       f"the model treats them as missing.")
    for name, share in sorted((facts.get("holdout_missing_share") or {}).items(), key=lambda kv: -kv[1]):
        if share >= 0.05:
            out.append(f"`{name}` is missing in {share:.1%} of holdout rows.")
    coverage = (facts.get("label_coverage") or {}).get("share")
    if coverage is not None and coverage < 0.99:
        out.append(f"Only {coverage:.1%} of the window's rows had a label when it trained "
                   f"({facts['label_coverage']['labelled_rows']} of {facts['label_coverage']['partition_rows']}); "
                   f"unlabelled rows were not seen.")
    if facts.get("missing_days"):
        out.append(f"{len(facts['missing_days'])} day(s) of the window had no data: {', '.join(facts['missing_days'])}.")
    holdout = facts.get("holdout") or {}
    if holdout.get("rows", 0) < 1000:
        out.append(f"The holdout has {holdout.get('rows')} rows: metric differences below a few points are noise.")
    if spec.task_type == TaskType.BINARY_CLASSIFICATION and holdout.get("positive_share") is not None:
        positives = holdout["positive_share"] * holdout.get("rows", 0)
        if positives < 100:
            out.append(f"The holdout holds {positives:.0f} positives: precision-type metrics are uncertain.")
    excluded = ((gate_report.get("fairness") or {}).get("excluded_groups") or {})
    if excluded:
        out.append(f"Fairness groups too small to judge (under {gate_report['fairness']['min_group_rows']} rows): "
                   f"{', '.join(f'{g} ({n})' for g, n in excluded.items())}.")
    for name in gate_report.get("not_evaluated") or []:
        out.append(f"Gate `{name}` could not be evaluated on this holdout.")
    return out


def _fmt(value: Any, spec: str = ".4f") -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value).lower()
    if isinstance(value, int | float) and math.isfinite(value):
        return format(value, spec)
    return str(value)


def build_card(spec: PipelineSpec, *, version: str, gate_report: Mapping[str, Any], outcome: str,
               reasons: list[str], run_tags: Mapping[str, str], window: Mapping[str, Any],
               shap: Mapping[str, Any] | None, facts: Mapping[str, Any] | None, run_url: str | None,
               registered_at: dt.datetime) -> str:
    """The card as Markdown."""
    from evergreen.explain import top_features
    from evergreen.tracking import Tag

    primary = gate_report.get("primary_metric") or spec.primary_metric
    candidate = gate_report.get("candidate") or "xgboost"
    challenger = gate_report.get("challenger_metrics") or {}
    baseline = gate_report.get("baseline_metrics") or {}
    champion = gate_report.get("champion_metrics")
    lines = [
        f"# Model card: {spec.registered_model_name} version {version}",
        "",
        f"*{candidate} model of training run `{gate_report.get('run_id')}`, registered "
        f"{registered_at:%Y-%m-%d %H:%M} UTC; gate outcome: **{outcome}**.*",
        "",
        "## Intended use",
        "",
        spec.description or f"The `{spec.name}` pipeline's model.",
        "",
        f"- Owner: {spec.owner}",
        f"- Task: {spec.task_type.value}; output: "
        f"{'P(' + spec.target.name + ' = 1)' if spec.task_type == TaskType.BINARY_CLASSIFICATION else spec.target.name}",
        f"- Inputs: {', '.join(f'`{n}`' for n in spec.model_features)}",
        "- Served as `models:/" + spec.registered_model_name + "@champion` once promoted; batch scores carry "
        "the version in every row.",
        "",
        "## Training data",
        "",
        f"- Window: {window.get('start')} .. {window.get('as_of')} ({len(window.get('partitions') or [])} daily "
        f"partitions; train {len(window.get('train_days') or [])}, validation {len(window.get('validation_days') or [])}, "
        f"holdout {len(window.get('holdout_days') or [])} days: {', '.join(window.get('holdout_days') or [])})",
        f"- Data digest: `{window.get('data_digest')}`",
    ]
    if window.get("labels_as_of"):
        lines.append(f"- Labels as known on {window['labels_as_of']}")
    coverage = (facts or {}).get("label_coverage") or {}
    if coverage.get("share") is not None:
        lines.append(f"- Label coverage: {coverage['labelled_rows']} of {coverage['partition_rows']} rows "
                     f"({coverage['share']:.1%})")
    lines += ["", "## Performance on the holdout", "",
              f"Primary metric: `{primary}`. Every model is scored on the same {gate_report.get('holdout_rows')} "
              "holdout rows.", "", "| metric | this model | baseline | champion |", "| --- | --- | --- | --- |"]
    names = [m for m in [primary, *sorted(challenger)] if m in challenger]
    for metric in dict.fromkeys(names):
        lines.append(f"| {metric} | {_fmt(challenger.get(metric))} | {_fmt(baseline.get(metric))} | "
                     f"{_fmt((champion or {}).get(metric)) if champion is not None else 'none'} |")
    if champion is not None:
        lines += ["", f"Compared with champion version {gate_report.get('champion_version')}: "
                      f"{'better' if gate_report.get('beats_champion') else 'not better'} on {primary}."]
    slices = gate_report.get("slice_metrics") or {}
    if slices:
        lines += ["", f"### Per `{spec.gates.slice_feature}` slice", "", f"| slice | rows | {primary} |",
                  "| --- | --- | --- |"]
        lines += [f"| {name} | {m.get('rows')} | {_fmt(m.get(primary))} |" for name, m in sorted(slices.items())]
    lines += ["", "## Gates", "", "| gate | value | threshold | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {g['name']} | {_fmt(g.get('value'))} | {_fmt(g.get('threshold'))} | {g.get('status')} |"
              for g in gate_report.get("gates") or []]
    if reasons:
        lines += ["", *[f"- {r}" for r in reasons]]
    lines += ["", "## Fairness", ""]
    fairness = gate_report.get("fairness")
    if fairness:
        cfg = f"{fairness['metric']} {'<=' if fairness['bound'] == 'max' else '>='} {fairness['limit']}"
        lines += [f"`{fairness['attribute']}` groups, {cfg} (decisions at score >= {fairness['threshold']}): "
                  f"**{_fmt(fairness.get('value'))}** ({fairness.get('status')}).", ""]
        groups = fairness.get("groups") or {}
        if groups:
            columns = [c for c in next(iter(groups.values())) if c != "rows"]
            lines += ["| group | rows | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 2) + "|"]
            lines += [f"| {g} | {m.get('rows')} | " + " | ".join(_fmt(m.get(c)) for c in columns) + " |"
                      for g, m in sorted(groups.items())]
        champion_fairness = gate_report.get("champion_fairness")
        if champion_fairness:
            lines += ["", f"Champion version {gate_report.get('champion_version')} on the same rows: "
                          f"{_fmt(champion_fairness.get('value'))}."]
    else:
        lines.append("No fairness gate is configured for this spec (`gates.fairness`).")
    lines += ["", "## What drives it", ""]
    if shap and shap.get("mean_abs_shap"):
        lines += [f"Mean |SHAP| on {shap.get('rows')} holdout rows (margin units), top features:", "",
                  "| feature | mean abs SHAP | share |", "| --- | --- | --- |"]
        lines += [f"| {n} | {_fmt(v)} | {s:.1%} |" for n, v, s in top_features(shap, 10)]
    else:
        lines.append("No SHAP summary was logged with this run.")
    lines += ["", "## Known limitations", ""]
    found = limitations(spec, facts or {}, gate_report)
    lines += [f"- {text}" for text in found] or ["- None measured on this window's data."]
    lines += ["", "## Lineage", "",
              f"- Training run: `{gate_report.get('run_id')}`" + (f" ([MLflow]({run_url}))" if run_url else ""),
              f"- Candidate run: `{gate_report.get('candidate_run_id') or gate_report.get('run_id')}`",
              f"- Code version: {run_tags.get(Tag.CODE_VERSION, 'n/a')}",
              f"- Partitions: {run_tags.get(Tag.PARTITIONS, 'n/a')}"]
    lineage = {k[len(Tag.PREFIX):]: v for k, v in sorted(run_tags.items())
               if k.startswith(Tag.PREFIX) and k not in (Tag.CODE_VERSION, Tag.PARTITIONS, Tag.MODEL_SHA256,
                                                         Tag.DATA_DIGEST, Tag.AS_OF, Tag.SPEC)}
    lines += [f"- {k}: `{v}`" for k, v in lineage.items() if len(v) < 200]
    return "\n".join(lines) + "\n"


def render_html(markdown: str, title: str) -> str:
    """The card as a self-contained HTML page (CommonMark with tables)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
             "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;"
             "text-align:left}th{background:#f3f3f3}code{background:#f5f5f5;padding:0 .2rem}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def publish_card(spec: PipelineSpec, client: Any, *, version: str, gate_report: Mapping[str, Any], outcome: str,
                 reasons: list[str], registered_at: dt.datetime) -> dict[str, str]:
    """Write the card of a registered version: Markdown and HTML artifacts of its candidate run, and the
    version's description (cut to what the registry stores, with a pointer to the full card)."""
    import tempfile
    from pathlib import Path

    from evergreen import tracking
    from evergreen.health import mlflow_ui_url

    run_id = str(gate_report.get("run_id"))
    candidate_run_id = str(gate_report.get("candidate_run_id") or run_id)
    run = client.get_run(run_id)
    shap = _optional_json(candidate_run_id, tracking.SHAP_ARTIFACT)
    facts = _optional_json(run_id, tracking.DATA_FACTS_ARTIFACT)
    window = tracking.download_json(run_id, tracking.WINDOW_ARTIFACT)
    ui = mlflow_ui_url()
    run_url = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run_id}" if ui else None
    markdown = build_card(spec, version=version, gate_report=gate_report, outcome=outcome, reasons=reasons,
                          run_tags=run.data.tags, window=window, shap=shap, facts=facts, run_url=run_url,
                          registered_at=registered_at)
    page = render_html(markdown, f"Model card: {spec.registered_model_name} v{version}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / Path(CARD_MARKDOWN).name).write_text(markdown, encoding="utf-8")
        (folder / Path(CARD_HTML).name).write_text(page, encoding="utf-8")
        for name in (CARD_MARKDOWN, CARD_HTML):
            client.log_artifact(candidate_run_id, str(folder / Path(name).name), str(Path(name).parent))
    pointer = f"\n\n(cut: the full card is the artifact `{CARD_MARKDOWN}` of run {candidate_run_id})"
    description = markdown if len(markdown) <= DESCRIPTION_LIMIT else \
        markdown[: DESCRIPTION_LIMIT - len(pointer)] + pointer
    client.update_model_version(spec.registered_model_name, version, description=description)
    return {"markdown": f"runs:/{candidate_run_id}/{CARD_MARKDOWN}", "html": f"runs:/{candidate_run_id}/{CARD_HTML}"}


def _optional_json(run_id: str, artifact: str) -> dict[str, Any] | None:
    """A run's JSON artifact, None if that run was logged before it existed."""
    from mlflow.exceptions import MlflowException

    from evergreen import tracking

    try:
        return tracking.download_json(run_id, artifact)
    except (MlflowException, OSError):
        return None
