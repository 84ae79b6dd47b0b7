# Evergreen's S3 storage on AWS: the storage-root bucket (EVERGREEN_STORAGE_ROOT), the MLflow artifact bucket
# (MLFLOW_ARTIFACTS_DESTINATION), one customer-managed KMS key encrypting both, and the least-privilege IAM
# policy of the processes that use them (the Airflow workers and the MLflow server share one credential in
# docker-compose.yaml). See docs/deploy.md; tests/unit/test_delivery.py checks these files (python-hcl2 and
# checkov: terraform validate/plan could not be run where this was written).

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # "<prefix>/" or "" (storage root at the bucket root): the key prefix every lifecycle filter starts with.
  storage_key_prefix = var.storage_root_prefix == "" ? "" : "${var.storage_root_prefix}/"
  mlflow_key_prefix  = "${var.mlflow_artifact_prefix}/"

  storage_root_uri    = var.storage_root_prefix == "" ? "s3://${module.storage_bucket.name}" : "s3://${module.storage_bucket.name}/${var.storage_root_prefix}"
  mlflow_artifact_uri = "s3://${module.mlflow_artifact_bucket.name}/${var.mlflow_artifact_prefix}"

  # What .env needs for these buckets (outputs make_env_args and dotenv): every key is one of .env.example's.
  env = {
    S3_BUCKET                    = module.storage_bucket.name
    S3_REGION                    = var.region
    S3_ENDPOINT_URL              = "https://s3.${var.region}.amazonaws.com"
    EVERGREEN_STORAGE_ROOT       = local.storage_root_uri
    MLFLOW_ARTIFACTS_DESTINATION = local.mlflow_artifact_uri
  }
}

# ------------------------------------------------------------------------------------------ encryption

resource "aws_kms_key" "s3" {
  description             = "Evergreen: server-side encryption of the storage-root and MLflow artifact buckets"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_key_deletion_window_days

  # The account's default key policy: access is granted by IAM policies (the worker policy below), so the
  # key is never locked out and no principal other than the account is named here.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersTheKeyThroughIam"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
    ]
  })
}

resource "aws_kms_alias" "s3" {
  name          = "alias/${var.name_prefix}-s3"
  target_key_id = aws_kms_key.s3.key_id
}

# ------------------------------------------------------------------------------------------ buckets

module "storage_bucket" {
  source = "./modules/private-bucket"

  name        = var.storage_bucket_name
  kms_key_arn = aws_kms_key.s3.arn
  # Rejected raw data and scores are kept for a while, not forever; features, labels, outcomes, reports
  # and decisions (the audit trail) never expire.
  expire_prefixes = {
    "${local.storage_key_prefix}quarantine/"  = var.quarantine_expiration_days
    "${local.storage_key_prefix}predictions/" = var.predictions_expiration_days
  }
  noncurrent_version_expiration_days     = var.noncurrent_version_expiration_days
  abort_incomplete_multipart_upload_days = var.abort_incomplete_multipart_upload_days
  force_destroy                          = var.force_destroy
  access_log_bucket                      = var.access_log_bucket
}

module "mlflow_artifact_bucket" {
  source = "./modules/private-bucket"

  name        = var.mlflow_artifact_bucket_name
  kms_key_arn = aws_kms_key.s3.arn
  # Registered models are the registry's history (rollback targets): no current object expires.
  expire_prefixes                        = {}
  noncurrent_version_expiration_days     = var.noncurrent_version_expiration_days
  abort_incomplete_multipart_upload_days = var.abort_incomplete_multipart_upload_days
  force_destroy                          = var.force_destroy
  access_log_bucket                      = var.access_log_bucket
}

# ------------------------------------------------------------------------------------------ worker policy

# Exactly what Evergreen's storage layer (s3fs: read, write, conditional create, list, delete of stale
# files, multipart uploads) and MLflow's artifact proxy do, on the two prefixes only.
data "aws_iam_policy_document" "workers" {
  # s3fs checks that the bucket exists before it creates a "folder" (mkdir with parents): HeadBucket first,
  # which the prefix-bound ListBucket below does not allow, then GetBucketLocation, which this does.
  statement {
    sid       = "LocateBothBuckets"
    effect    = "Allow"
    actions   = ["s3:GetBucketLocation"]
    resources = [module.storage_bucket.arn, module.mlflow_artifact_bucket.arn]
  }

  statement {
    sid       = "ListTheStorageRoot"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [module.storage_bucket.arn]

    dynamic "condition" {
      for_each = var.storage_root_prefix == "" ? [] : [var.storage_root_prefix]
      content {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = [condition.value, "${condition.value}/*"]
      }
    }
  }

  statement {
    sid       = "ListTheMlflowArtifactRoot"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [module.mlflow_artifact_bucket.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.mlflow_artifact_prefix, "${var.mlflow_artifact_prefix}/*"]
    }
  }

  statement {
    sid    = "ReadAndWriteObjectsUnderBothRoots"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
    ]
    resources = [
      "${module.storage_bucket.arn}/${local.storage_key_prefix}*",
      "${module.mlflow_artifact_bucket.arn}/${local.mlflow_key_prefix}*",
    ]
  }

  statement {
    sid       = "UseTheBucketKeyThroughS3Only"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.s3.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_policy" "workers" {
  name        = "${var.name_prefix}-workers"
  description = "Evergreen: the Airflow workers and the MLflow server on the storage root and the MLflow artifact root"
  policy      = data.aws_iam_policy_document.workers.json
}

resource "aws_iam_role_policy_attachment" "workers" {
  for_each   = toset(var.worker_role_names)
  role       = each.value
  policy_arn = aws_iam_policy.workers.arn
}

resource "aws_iam_group_policy_attachment" "workers" {
  for_each   = toset(var.worker_group_names)
  group      = each.value
  policy_arn = aws_iam_policy.workers.arn
}
