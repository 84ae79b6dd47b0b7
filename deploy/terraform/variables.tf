variable "region" {
  description = "AWS region of the buckets (S3_REGION in .env)."
  type        = string
  default     = "eu-west-1"
}

variable "name_prefix" {
  description = "Prefix of the KMS alias and the IAM policy name."
  type        = string
  default     = "evergreen"

  validation {
    condition     = can(regex("^[a-zA-Z0-9+=,.@_-]{1,40}$", var.name_prefix))
    error_message = "name_prefix: 1-40 characters of letters, digits and +=,.@_-."
  }
}

variable "storage_bucket_name" {
  description = "Bucket of the storage root (EVERGREEN_STORAGE_ROOT): features, quarantine, predictions, labels, outcomes, reports, decisions."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.storage_bucket_name))
    error_message = "storage_bucket_name: 3-63 characters of lowercase letters, digits, dots and hyphens."
  }
}

variable "mlflow_artifact_bucket_name" {
  description = "Bucket of the MLflow artifacts (MLFLOW_ARTIFACTS_DESTINATION): models, profiles, plots, holdouts."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.mlflow_artifact_bucket_name))
    error_message = "mlflow_artifact_bucket_name: 3-63 characters of lowercase letters, digits, dots and hyphens."
  }
}

variable "storage_root_prefix" {
  description = "Key prefix of the storage root inside its bucket (s3://<bucket>/<prefix>); empty for the bucket root."
  type        = string
  default     = "evergreen"

  validation {
    condition     = can(regex("^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$", var.storage_root_prefix))
    error_message = "storage_root_prefix: key segments of letters, digits and ._- separated by '/', no leading or trailing '/'."
  }
}

variable "mlflow_artifact_prefix" {
  description = "Key prefix of the MLflow artifact root inside its bucket (s3://<bucket>/<prefix>)."
  type        = string
  default     = "mlflow"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.mlflow_artifact_prefix))
    error_message = "mlflow_artifact_prefix: key segments of letters, digits and ._- separated by '/', not empty."
  }
}

variable "quarantine_expiration_days" {
  description = "Days after which objects under <storage root>/quarantine/ (rejected raw data and its validation report) expire."
  type        = number
  default     = 30

  validation {
    condition     = var.quarantine_expiration_days >= 1
    error_message = "quarantine_expiration_days must be at least 1."
  }
}

variable "predictions_expiration_days" {
  description = "Days after which objects under <storage root>/predictions/ (batch and online scores) expire. Keep it longer than the largest labels.max_delay_days of your specs: the outcomes DAG joins late labels to these predictions (outcomes/ itself does not expire)."
  type        = number
  default     = 90

  validation {
    condition     = var.predictions_expiration_days >= 7
    error_message = "predictions_expiration_days must be at least 7 (late labels are joined to predictions)."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days a replaced or deleted object version is kept (versioning's undo window), in both buckets."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which an unfinished multipart upload is aborted (its parts deleted), in both buckets."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1
    error_message = "abort_incomplete_multipart_upload_days must be at least 1."
  }
}

variable "kms_key_deletion_window_days" {
  description = "Waiting period before the buckets' KMS key is deleted after `terraform destroy` (7-30)."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_key_deletion_window_days >= 7 && var.kms_key_deletion_window_days <= 30
    error_message = "kms_key_deletion_window_days must be between 7 and 30."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets (every object version). Keep false in production."
  type        = bool
  default     = false
}

variable "access_log_bucket" {
  description = "Existing bucket receiving S3 server access logs of both buckets (null: no access logs). It must accept logs from the logging service (SSE-S3, not SSE-KMS)."
  type        = string
  default     = null
}

variable "worker_role_names" {
  description = "IAM roles that get the worker policy (e.g. the instance or task roles of the Airflow workers and the MLflow server)."
  type        = list(string)
  default     = []
}

variable "worker_group_names" {
  description = "IAM groups that get the worker policy: put the IAM user whose access key goes into .env (S3_ACCESS_KEY_ID) in one."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags added to every resource (besides Project and ManagedBy)."
  type        = map(string)
  default     = {}
}
