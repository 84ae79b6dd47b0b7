variable "name" {
  description = "Bucket name."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the default server-side encryption (SSE-KMS with an S3 bucket key)."
  type        = string
}

variable "expire_prefixes" {
  description = "Key prefix => days after which current objects under it expire (then noncurrent_version_expiration_days removes them)."
  type        = map(number)
  default     = {}
}

variable "noncurrent_version_expiration_days" {
  description = "Days a noncurrent object version is kept."
  type        = number
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which an incomplete multipart upload is aborted."
  type        = number
}

variable "force_destroy" {
  description = "Allow destroying a non-empty bucket."
  type        = bool
  default     = false
}

variable "access_log_bucket" {
  description = "Bucket receiving server access logs (null: none)."
  type        = string
  default     = null
}
