"""The model registry: the one champion lookup, register, promote (compare-and-set on ``champion``),
roll back, and the decision log.

Aliases (never the deprecated stages): ``champion`` serves, ``previous_champion`` is the rollback target,
``challenger`` is the latest registered candidate.

Every decision is one JSON file ``models/<spec>/decisions/<UTC timestamp>-<kind>-<id>.json`` in storage
(object-store appends are not atomic, single-object PUTs are), so :func:`decision_history` and
:func:`champion_on` can answer "which version served at time X and why". Decision timestamps are passed
in (``decided_at``, e.g. the Airflow logical date) so a rerun rewrites the same file instead of adding one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Generator, Mapping
from typing import Any

from evergreen import layout, model_card, settings, storage
from evergreen.errors import RegistryError
from evergreen.evaluation import PROMOTING, promotion_outcome
from evergreen.spec import PipelineSpec
from evergreen.tracking import Tag, model_uri_of, truncate

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"
CHALLENGER = "challenger"
CHAMPION_CHANGING_KINDS = frozenset({"promoted", "rolled_back"})
LOCK_TTL_SECONDS = 600.0  # a holder that died frees the lock after this (far longer than any promotion)
LOCK_WAIT_SECONDS = 120.0


# ------------------------------------------------------------------------------------ registry lock


@contextlib.contextmanager
def registry_lock(spec: PipelineSpec, owner: str, *, wait_seconds: float = LOCK_WAIT_SECONDS,
                  ttl_seconds: float = LOCK_TTL_SECONDS) -> Generator[None, None, None]:
    """Hold the spec's registry lock while aliases change: one promotion or rollback at a time, across
    processes and machines.

    MLflow has no conditional alias update, so promoters serialise on an object in the storage root that
    only one can create (``storage.create_exclusive``: ``O_EXCL`` locally, ``If-None-Match`` on S3). A lock
    older than ``ttl_seconds`` belongs to a holder that died and is taken over. Expiry and takeover use
    wall-clock time: they are about real processes, not about data time. Raises RegistryError when the
    lock stays held for ``wait_seconds``.
    """
    path = storage.at(layout.registry_lock(spec.name))
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait_seconds
    while True:
        now = dt.datetime.now(dt.UTC)
        body = {"owner": owner, "token": token, "acquired_at": now.isoformat(),
                "expires_at": (now + dt.timedelta(seconds=ttl_seconds)).isoformat()}
        if storage.create_exclusive(path, storage.canonical_json(body)):
            break
        held = _read_lock(path)
        if held is None:  # released between our two calls
            continue
        if held.get("token") == token:  # our own create, whose reply was lost and retried by the client
            break
        if dt.datetime.fromisoformat(held["expires_at"]) < now:
            # Re-read right before deleting, so a lock a faster waiter just took over is left alone (the
            # remaining window is that re-read to the delete, and only after a holder died).
            if (_read_lock(path) or {}).get("token") == held.get("token"):
                log.warning("taking over the expired registry lock of %s held by %s since %s", spec.name,
                            held.get("owner"), held.get("acquired_at"))
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            continue
        if time.monotonic() > deadline:
            raise RegistryError(f"the registry of {spec.name} stayed locked by {held.get('owner')} "
                                f"(since {held.get('acquired_at')}) for {wait_seconds:g} s")
        time.sleep(0.2)
    try:
        yield
    finally:
        try:
            if (_read_lock(path) or {}).get("token") == token:
                path.unlink()
        except OSError as exc:  # the decision is recorded: a failed release only delays the next holder
            log.warning("could not release the registry lock of %s (it expires by itself): %s", spec.name, exc)


def _read_lock(path: Any) -> dict[str, Any] | None:
    """The lock's content, or None when there is no lock."""
    try:
        return storage.read_json(path)
    except FileNotFoundError:
        return None


# ------------------------------------------------------------------------------------ decision log


def _utc(moment: dt.datetime | None) -> dt.datetime:
    """Aware UTC datetime; naive input is taken to be UTC already."""
    if moment is None:
        return dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def decisions_dir(spec: PipelineSpec) -> Any:
    return storage.at(layout.decisions(spec.name))


def _decision_file_name(decided_at: dt.datetime, kind: str, ident: str) -> str:
    # Fixed-width UTC timestamp first, so lexical order is time order.
    safe = re.sub(r"[^A-Za-z0-9_.]+", "_", ident) or "none"
    return f"{decided_at:%Y%m%dT%H%M%S%fZ}-{kind}-{safe}.json"


def record_decision(spec: PipelineSpec, record: dict[str, Any]) -> dict[str, Any]:
    """Write one decision file (atomically; same decision, same name: reruns overwrite, not duplicate)."""
    decided_at = _utc(dt.datetime.fromisoformat(record["decided_at"]))
    ident = str(record.get("version") or (record.get("run_id") or "")[:12])
    name = _decision_file_name(decided_at, record["kind"], ident)
    record = {**record, "decision_file": name}
    storage.write_json_atomic(decisions_dir(spec) / name, record)
    return record


def decision_history(spec: PipelineSpec) -> list[dict[str, Any]]:
    """All recorded decisions, oldest first (ties broken by file name)."""
    directory = decisions_dir(spec)
    if not directory.exists():
        return []
    files = sorted((p for p in directory.iterdir() if p.is_file() and p.name.endswith(".json")),
                   key=lambda p: p.name)
    records = [storage.read_json(p) for p in files]
    return sorted(records, key=lambda r: (_utc(dt.datetime.fromisoformat(r["decided_at"])), r["decision_file"]))


def champion_on(spec: PipelineSpec, when: dt.datetime) -> dict[str, Any] | None:
    """The champion at ``when`` per the decision log: version, since when, and the deciding record."""
    when = _utc(when)
    current: dict[str, Any] | None = None
    for record in decision_history(spec):
        if _utc(dt.datetime.fromisoformat(record["decided_at"])) > when:
            break
        if record["kind"] in CHAMPION_CHANGING_KINDS and record.get("champion_after"):
            current = record
    if current is None:
        return None
    return {
        "version": current["champion_after"],
        "since": current["decided_at"],
        "kind": current["kind"],
        "run_id": current.get("run_id"),
        "actor": current.get("actor"),
        "reasons": current.get("reasons", []),
        "decision": current,
    }


# ----------------------------------------------------------------------------------- registry I/O


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def model_version(client: Any, name: str, alias: str) -> Any | None:
    """The ModelVersion behind ``alias``, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """Version number behind ``alias``, or None."""
    found = model_version(client, name, alias)
    return None if found is None else str(found.version)


def champion(spec: PipelineSpec, client: Any | None = None) -> Any | None:
    """The ModelVersion serving as ``@champion`` for ``spec``, or None: the one champion lookup."""
    return model_version(client or _client(), spec.registered_model_name, CHAMPION)


def champion_trained_on(spec: PipelineSpec, data_digest: str, client: Any | None = None) -> str | None:
    """The champion's version when it was trained on exactly ``data_digest`` (partitions and labels), else
    None: a retrain on the same data can only produce the same model."""
    from evergreen.tracking import Tag

    client = client or _client()
    version = champion(spec, client)
    if version is None:
        return None
    return str(version.version) if client.get_run(version.run_id).data.tags.get(Tag.DATA_DIGEST) == data_digest \
        else None


def serving_versions(spec: PipelineSpec, client: Any | None = None) -> dict[str, str]:
    """``{"champion": version[, "challenger": version]}`` (the challenger only when it is not the champion);
    empty when there is no champion."""
    client = client or _client()
    name = spec.registered_model_name
    current = alias_version(client, name, CHAMPION)
    if current is None:
        return {}
    versions = {CHAMPION: current}
    candidate = alias_version(client, name, CHALLENGER)
    if candidate is not None and candidate != current:
        versions[CHALLENGER] = candidate
    return versions


def load_version(spec: PipelineSpec, version: str | int, client: Any | None = None) -> Any:
    """A registered version as a pyfunc, its artifacts verified against the hashes recorded at training."""
    from evergreen import tracking

    client = client or _client()
    name = spec.registered_model_name
    tags = client.get_model_version(name, str(version)).tags
    return tracking.load_verified_model(version_uri(spec, version),
                                        tracking.model_manifest(tags, f"{name} version {version}"))


def version_uri(spec: PipelineSpec, version: str | int) -> str:
    """``models:/<name>/<version>``: a pinned version (an alias URI could move under a running task)."""
    return f"models:/{spec.registered_model_name}/{version}"


def _set_alias(client: Any, name: str, alias: str, version: str, attempts: int = 3) -> None:
    """Point ``alias`` at ``version``, retrying a lost insert race.

    MLflow's SQL store inserts an alias row the first time it is set; two concurrent first-time sets of
    the same alias make one fail on the unique constraint. The alias then exists, so a retry updates it.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _gate_summary(gate_report: Mapping[str, Any]) -> dict[str, Any]:
    primary = gate_report.get("primary_metric")
    metrics = gate_report.get("challenger_metrics") or {}
    champion_metrics = gate_report.get("champion_metrics") or {}
    return {
        "passed": bool(gate_report.get("passed")),
        "failed": list(gate_report.get("failed", [])),
        "primary_metric": primary,
        "challenger": metrics.get(primary) if primary else None,
        "champion": champion_metrics.get(primary) if primary else None,
        "champion_version": gate_report.get("champion_version"),
        "beats_champion": gate_report.get("beats_champion"),
        "candidate": gate_report.get("candidate") or "xgboost",
    }


def _rejection_reasons(gate_report: Mapping[str, Any]) -> list[str]:
    reasons = []
    for gate in gate_report.get("gates", []):
        if not gate.get("passed"):
            reasons.append(f"{gate['name']}: {gate.get('detail', '')} (value={gate.get('value')}, "
                           f"threshold={gate.get('threshold')})")
    return reasons or ["gate report did not pass"]


def _find_or_register(client: Any, name: str, run_id: str, model_uri: str, tags: dict[str, str]) -> str:
    """The version registered from ``run_id``; registers it once (a retried task must not add versions)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        existing = []
    if existing:
        return str(min(int(v.version) for v in existing))
    version = mlflow.register_model(model_uri, name, tags=tags)
    return str(version.version)


def _tag_version(client: Any, name: str, version: str, tags: Mapping[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, truncate(value))


def _compare_and_set_champion(client: Any, name: str, expected: str | None, version: str,
                              settle_seconds: float) -> tuple[bool, str | None, list[str], float]:
    """Move ``champion`` from ``expected`` to ``version`` unless someone else moved it first.

    MLflow has no conditional alias update. Evergreen's own writers are serialised by ``registry_lock``;
    this read-compare-set, then wait ``settle_seconds`` and re-read, also guards against writers outside
    Evergreen (the MLflow UI, a script). Without the lock, contenders that evaluated against the same old
    champion all read it before the first of them moves the alias (a later reader sees the move and backs
    off), so each one's own read-to-set time bounds when the last set can land; waiting longer than that
    before verifying means every contender verifies the same final value and exactly one sees itself. The
    race the lock closes: a contender stalled between its read and its set for longer than
    ``settle_seconds`` (GC pause, network stall) could overwrite the alias after the winner verified; we
    still log a slow read-to-set (``read_to_set_seconds``) for audit.

    Returns (won, champion now, reasons, read-to-set seconds).
    """
    from mlflow.exceptions import MlflowException

    started = time.monotonic()
    current = alias_version(client, name, CHAMPION)
    if current == version:
        return True, current, ["already champion (retried promotion)"], 0.0
    if current != expected:
        return False, current, [f"champion changed concurrently: evaluated against {expected}, found {current}"], 0.0
    if current is not None:
        # previous_champion first, then champion: set_registered_model_alias overwrites in place, so
        # there is never a moment without a champion, and rollback always has a target.
        _set_alias(client, name, PREVIOUS_CHAMPION, current)
    try:
        client.set_registered_model_alias(name, CHAMPION, version)
    except MlflowException:
        # With no champion yet, a concurrent first promotion can win the alias insert: we lost.
        now = alias_version(client, name, CHAMPION)
        if now in (None, expected):
            raise
        return False, now, [f"champion changed concurrently: lost to version {now}"], time.monotonic() - started
    read_to_set = time.monotonic() - started
    if read_to_set > settle_seconds:
        log.warning("champion CAS for %s v%s took %.2fs from read to set (> settle %.2fs): a concurrent "
                    "promotion may not be detected", name, version, read_to_set, settle_seconds)
    time.sleep(settle_seconds)
    final = alias_version(client, name, CHAMPION)
    if final != version:
        return False, final, [f"champion changed concurrently: lost to version {final}"], read_to_set
    return True, final, [], read_to_set


# -------------------------------------------------------------------------------------- decisions


def promote_if_better(
    spec: PipelineSpec,
    run_id: str,
    gate_report: Mapping[str, Any],
    *,
    dry_run: bool,
    actor: str,
    decided_at: dt.datetime | None = None,
    settle_seconds: float | None = None,
    approval: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Register a challenger that passed its gates and make it champion if it beat the evaluated champion.

    ``approval`` (``promotion.mode: approval``): ``{approved, by, at}`` from the person asked; a promotion
    that was not approved (or not answered in time) is ``rejected``, with who and why in the record.

    Decision kinds: ``rejected`` (gates failed, nothing registered), ``registered`` (passed but did not
    beat the champion, or the champion moved since evaluation), ``promoted``, ``shadowing``
    (``promotion.mode: shadow``: registered as ``challenger``, promoted later by :func:`judge_shadow`),
    ``dry_run`` (storage record only, ``outcome`` says what would have happened). Returns the recorded decision. Everything but a dry
    run happens under the registry lock.
    """
    if dry_run:
        return _promote(spec, run_id, gate_report, dry_run=True, actor=actor, decided_at=decided_at,
                        settle_seconds=settle_seconds, approval=approval)
    with registry_lock(spec, actor):
        return _promote(spec, run_id, gate_report, dry_run=False, actor=actor, decided_at=decided_at,
                        settle_seconds=settle_seconds, approval=approval)


def _promote(spec: PipelineSpec, run_id: str, gate_report: Mapping[str, Any], *, dry_run: bool, actor: str,
             decided_at: dt.datetime | None, settle_seconds: float | None,
             approval: Mapping[str, Any] | None = None) -> dict[str, Any]:
    decided = _utc(decided_at)
    # Wait between moving the alias and verifying it (see _compare_and_set_champion); tests shorten it.
    settle = settings.current().cas_settle_seconds if settle_seconds is None else settle_seconds
    name = spec.registered_model_name
    expected = gate_report.get("champion_version")
    expected = str(expected) if expected is not None else None
    outcome, outcome_reasons = promotion_outcome(gate_report, bar_blocks=spec.gates.bar_blocks)
    refused: list[str] = []
    if approval is not None and not approval.get("approved"):
        who = approval.get("by")
        refused = [f"promotion not approved by {who}" if who else
                   f"promotion not approved: no answer within {spec.promotion.approval_timeout_hours:g} h (default Reject)"]
        outcome = "reject"
    passed = outcome != "reject"
    beats = outcome in PROMOTING
    below_bar = outcome == "promote_below_bar"
    client = _client()
    champion_before = alias_version(client, name, CHAMPION)
    record: dict[str, Any] = {
        "spec": spec.name,
        "model_name": name,
        "run_id": run_id,
        "version": None,
        "actor": actor,
        "decided_at": decided.isoformat(),
        "dry_run": dry_run,
        "gates": _gate_summary(gate_report),
        "champion_evaluated_against": expected,
        "champion_before": champion_before,
        "champion_after": champion_before,
        "reasons": [],
        "below_bar": below_bar,
        "candidate": gate_report.get("candidate") or "xgboost",
        "candidate_run_id": gate_report.get("candidate_run_id") or run_id,
        **({"approval": dict(approval)} if approval is not None else {}),
    }
    if below_bar:  # loud: the new champion fails a bar, the old one failed it worse on the same rows
        log.warning("%s run %s: %s", spec.name, run_id, "; ".join(outcome_reasons))

    if dry_run:
        if not passed:
            outcome, reasons = "would_reject", _rejection_reasons(gate_report)
        elif not beats:
            outcome, reasons = "would_register", [f"does not beat champion {expected}"]
        elif champion_before != expected:
            outcome, reasons = "would_register", [f"champion changed since evaluation ({expected} -> {champion_before})"]
        else:
            outcome, reasons = "would_promote", []
        return record_decision(spec, {**record, "kind": "dry_run", "outcome": outcome, "reasons": reasons})

    if not passed:
        reasons = refused or _rejection_reasons(gate_report)
        client.set_tag(run_id, Tag.DECISION, "rejected")
        client.set_tag(run_id, Tag.REJECTION_REASONS, truncate("; ".join(reasons)))
        client.set_tag(run_id, Tag.DECIDED_AT, decided.isoformat())
        return record_decision(spec, {**record, "kind": "rejected", "reasons": reasons})

    # The model registered is the candidate the gates judged: XGBoost's (the training run) or the baseline's.
    candidate_run_id = str(gate_report.get("candidate_run_id") or run_id)
    run_tags = client.get_run(candidate_run_id).data.tags
    model_uri = model_uri_of(candidate_run_id, run_tags)
    summary = record["gates"]
    version_tags = {
        **{k: truncate(v) for k, v in run_tags.items() if k.startswith(Tag.PREFIX) and k not in Tag.NOT_LINEAGE},
        Tag.RUN_ID: candidate_run_id,
        Tag.CANDIDATE: str(summary["candidate"]),
        Tag.GATES_PASSED: "false" if below_bar else "true",
        Tag.PRIMARY_METRIC: str(summary["primary_metric"]),
        Tag.PRIMARY_METRIC_VALUE: str(summary["challenger"]),
        Tag.CHAMPION_EVALUATED_AGAINST: str(expected),
        # One tag per gate keeps the report readable in the MLflow UI's version page.
        **{f"{Tag.GATE_PREFIX}{g['name']}": truncate(f"{'pass' if g.get('passed') else 'fail'} "
                                                     f"value={g.get('value')} threshold={g.get('threshold')}")
           for g in gate_report.get("gates", [])},
    }
    version = _find_or_register(client, name, candidate_run_id, model_uri, version_tags)
    if champion_before == version:
        # A retried (or doubled) promotion of the champion: its decision is recorded already.
        earlier = [r for r in decision_history(spec) if r["kind"] == "promoted" and r.get("version") == version]
        if earlier:
            return earlier[-1]
    _tag_version(client, name, version, version_tags)
    # The card before any alias moves: a retry after a failure here re-registers nothing and writes it again.
    record["model_card"] = model_card.publish_card(spec, client, version=version, gate_report=gate_report,
                                                   outcome=outcome, reasons=outcome_reasons, registered_at=decided)
    _set_alias(client, name, CHALLENGER, version)
    record["version"] = version

    if not beats:
        kind = "registered"
        reasons = [f"passed the gates but does not beat champion {expected} on {summary['primary_metric']}"]
        champion_after = alias_version(client, name, CHAMPION)
        read_to_set = 0.0
    elif expected is not None and spec.promotion.mode == "shadow":
        # Shadow mode: it serves beside the champion until realized outcomes decide (judge_shadow).
        kind = "shadowing"
        reasons = [*outcome_reasons, f"beats champion {expected} on the holdout; scored in shadow until "
                                     f"{spec.promotion.shadow_days} outcome days compare them on the same rows"]
        champion_after = alias_version(client, name, CHAMPION)
        read_to_set = 0.0
    else:
        won, champion_after, reasons, read_to_set = _compare_and_set_champion(client, name, expected, version, settle)
        kind = "promoted" if won else "registered"
        if below_bar:
            reasons = [*outcome_reasons, *reasons]
        if won and alias_version(client, name, CHALLENGER) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
    decision_tags = {Tag.DECISION: kind, Tag.DECIDED_AT: decided.isoformat(), Tag.DECIDED_BY: actor}
    _tag_version(client, name, version, decision_tags)
    client.set_tag(run_id, Tag.DECISION, kind)
    client.set_tag(run_id, Tag.DECIDED_AT, decided.isoformat())
    return record_decision(spec, {
        **record,
        "kind": kind,
        "reasons": reasons,
        "champion_after": champion_after,
        "previous_champion": alias_version(client, name, PREVIOUS_CHAMPION),
        "read_to_set_seconds": round(read_to_set, 3),
    })


def judge_shadow(spec: PipelineSpec, *, actor: str, decided_at: dt.datetime | None = None,
                 settle_seconds: float | None = None) -> dict[str, Any] | None:
    """Promote or drop a challenger in shadow once ``promotion.shadow_days`` outcome days compare it with
    the champion on the same labelled rows: ``promoted`` when its realized primary metric is better,
    ``rejected`` (the ``challenger`` alias removed) otherwise. None when no challenger is in shadow;
    ``{"kind": "waiting", ...}`` (not recorded) while there are fewer days. Under the registry lock."""
    with registry_lock(spec, actor):
        return _judge_shadow(spec, actor=actor, decided_at=decided_at, settle_seconds=settle_seconds)


def _judge_shadow(spec: PipelineSpec, *, actor: str, decided_at: dt.datetime | None,
                  settle_seconds: float | None) -> dict[str, Any] | None:
    from evergreen.evaluation import improvement
    from evergreen.outcomes import shadow_comparison

    client = _client()
    name = spec.registered_model_name
    champion_version, challenger = alias_version(client, name, CHAMPION), alias_version(client, name, CHALLENGER)
    if champion_version is None or challenger is None or challenger == champion_version:
        return None
    started = [r for r in decision_history(spec) if r["kind"] == "shadowing" and r.get("version") == challenger]
    if not started:
        return None  # registered only (did not beat the champion on its holdout): not a shadow candidate
    trained_through = dt.date.fromisoformat(client.get_model_version(name, challenger).tags[Tag.AS_OF])
    evidence = shadow_comparison(spec, champion_version, challenger, after=trained_through)
    needed = spec.promotion.shadow_days
    if len(evidence["days"]) < needed or evidence["challenger"] is None or evidence["champion"] is None:
        return {"kind": "waiting", "version": challenger, "evidence": evidence,
                "reasons": [f"{len(evidence['days'])} of {needed} outcome days compare the shadow challenger"]}
    decided = _utc(decided_at)
    metric = evidence["metric"]
    better = improvement(metric, float(evidence["challenger"]), float(evidence["champion"])) > 0
    summary = (f"realized {metric} over {len(evidence['days'])} days ({evidence['rows']} rows): challenger "
               f"{evidence['challenger']:.4f}, champion {champion_version} {evidence['champion']:.4f}")
    record: dict[str, Any] = {
        "spec": spec.name, "model_name": name, "version": challenger, "run_id": started[-1].get("run_id"),
        "actor": actor, "decided_at": decided.isoformat(), "dry_run": False, "mode": "shadow",
        "evidence": evidence, "champion_evaluated_against": champion_version, "champion_before": champion_version,
        "candidate": started[-1].get("candidate"), "gates": started[-1].get("gates"),
    }
    if better:
        settle = settings.current().cas_settle_seconds if settle_seconds is None else settle_seconds
        won, champion_after, reasons, read_to_set = _compare_and_set_champion(client, name, champion_version,
                                                                             challenger, settle)
        kind = "promoted" if won else "registered"
        reasons = [f"won in shadow: {summary}", *reasons]
        if won and alias_version(client, name, CHALLENGER) == challenger:
            client.delete_registered_model_alias(name, CHALLENGER)
    else:
        kind, champion_after, read_to_set = "rejected", champion_version, 0.0
        reasons = [f"lost in shadow: {summary}"]
        client.delete_registered_model_alias(name, CHALLENGER)
    _tag_version(client, name, challenger, {Tag.DECISION: kind, Tag.DECIDED_AT: decided.isoformat(),
                                            Tag.DECIDED_BY: actor})
    return record_decision(spec, {**record, "kind": kind, "reasons": reasons, "champion_after": champion_after,
                                  "previous_champion": alias_version(client, name, PREVIOUS_CHAMPION),
                                  "read_to_set_seconds": round(read_to_set, 3)})


def _require_version(client: Any, name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{name} has no version {version}") from exc


def rollback(
    spec: PipelineSpec,
    *,
    target_version: str | None = None,
    actor: str,
    reason: str,
    decided_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """Make ``target_version`` (default: ``previous_champion``) champion; the old champion becomes
    ``previous_champion``. Versions and history are kept; returns the ``rolled_back`` decision. Under the
    registry lock, so a rollback and a promotion never interleave."""
    with registry_lock(spec, actor):
        return _rollback(spec, target_version=target_version, actor=actor, reason=reason, decided_at=decided_at)


def _rollback(spec: PipelineSpec, *, target_version: str | None, actor: str, reason: str,
              decided_at: dt.datetime | None) -> dict[str, Any]:
    decided = _utc(decided_at)
    name = spec.registered_model_name
    client = _client()
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    target = str(target_version) if target_version is not None else alias_version(client, name, PREVIOUS_CHAMPION)
    if target is None:
        raise RegistryError(f"{name} has no {PREVIOUS_CHAMPION}; pass target_version explicitly")
    if target == current:
        raise RegistryError(f"version {target} of {name} is already the champion")
    _require_version(client, name, target)
    _set_alias(client, name, PREVIOUS_CHAMPION, current)
    _set_alias(client, name, CHAMPION, target)
    _tag_version(client, name, target, {Tag.DECISION: "rolled_back", Tag.DECIDED_AT: decided.isoformat(),
                                        Tag.DECIDED_BY: actor, Tag.ROLLBACK_REASON: reason})
    _tag_version(client, name, current, {Tag.ROLLED_BACK_AT: decided.isoformat(), Tag.ROLLBACK_REASON: reason})
    version = client.get_model_version(name, target)
    return record_decision(spec, {
        "spec": spec.name,
        "model_name": name,
        "kind": "rolled_back",
        "run_id": version.run_id,
        "version": target,
        "actor": actor,
        "decided_at": decided.isoformat(),
        "dry_run": False,
        "champion_before": current,
        "champion_after": target,
        "previous_champion": current,
        "reasons": [reason],
    })
