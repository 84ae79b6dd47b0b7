output "storage_bucket_name" {
  description = "The storage-root bucket (S3_BUCKET in .env)."
  value       = module.storage_bucket.name
}

output "mlflow_artifact_bucket_name" {
  description = "The MLflow artifact bucket."
  value       = module.mlflow_artifact_bucket.name
}

output "storage_root_uri" {
  description = "EVERGREEN_STORAGE_ROOT in .env."
  value       = local.storage_root_uri
}

output "mlflow_artifact_root" {
  description = "MLFLOW_ARTIFACTS_DESTINATION in .env (the MLflow server's --artifacts-destination)."
  value       = local.mlflow_artifact_uri
}

output "worker_policy_arn" {
  description = "The least-privilege IAM policy of the Airflow workers and the MLflow server."
  value       = aws_iam_policy.workers.arn
}

output "kms_key_arn" {
  description = "The KMS key encrypting both buckets."
  value       = aws_kms_key.s3.arn
}

# `python3 scripts/make-env.py $(terraform output -raw make_env_args)` writes a .env for these buckets
# (every key is one of .env.example's, which make-env.py requires). The access key of the IAM user in a
# worker group is added with --set S3_ACCESS_KEY_ID=... --set S3_SECRET_ACCESS_KEY=... (docs/deploy.md).
output "make_env_args" {
  description = "--set arguments of scripts/make-env.py wiring these buckets into .env."
  value       = join(" ", [for key, value in local.env : "--set ${key}=${value}"])
}

output "dotenv" {
  description = "The same settings as .env lines, to edit into an existing .env."
  value       = join("", [for key, value in local.env : "${key}=${value}\n"])
}
