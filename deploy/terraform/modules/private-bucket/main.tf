# A private, versioned, KMS-encrypted bucket reachable over TLS only, with lifecycle rules: the shape both of
# Evergreen's buckets share (../../main.tf).

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice (a second region, twice the storage); versioning with noncurrent-version expiry is the recovery in-region. Add aws_s3_bucket_replication_configuration where required.
  #checkov:skip=CKV2_AWS_62:No consumer of S3 event notifications: Evergreen's readers follow manifests and Airflow asset events, never S3 events.
  #checkov:skip=CKV_AWS_18:Server access logging needs a separate log bucket the organisation owns: set var.access_log_bucket to enable it (aws_s3_bucket_logging below).
  bucket        = var.name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

# Requests not over TLS, and over TLS older than 1.2, are denied to everyone: two statements, since the
# conditions of one statement must all hold (and s3:TlsVersion is absent from a plain-HTTP request).
locals {
  tls_denials = {
    DenyInsecureTransport = { test = "Bool", variable = "aws:SecureTransport", value = "false" }
    DenyTlsOlderThan12    = { test = "NumericLessThan", variable = "s3:TlsVersion", value = "1.2" }
  }
}

data "aws_iam_policy_document" "tls_only" {
  dynamic "statement" {
    for_each = local.tls_denials
    content {
      sid       = statement.key
      effect    = "Deny"
      actions   = ["s3:*"]
      resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      condition {
        test     = statement.value.test
        variable = statement.value.variable
        values   = [statement.value.value]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.tls_only.json

  # A bucket policy is refused while the public access block is being created.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  # Whole bucket: unfinished multipart uploads, replaced or deleted versions, and the delete markers left
  # once their versions are gone.
  rule {
    id     = "housekeeping"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  dynamic "rule" {
    for_each = var.expire_prefixes
    content {
      id     = "expire-${trim(replace(rule.key, "/", "-"), "-")}"
      status = "Enabled"

      filter {
        prefix = rule.key
      }

      expiration {
        days = rule.value
      }
    }
  }

  # Lifecycle rules on noncurrent versions need versioning first.
  depends_on = [aws_s3_bucket_versioning.this]
}

resource "aws_s3_bucket_logging" "this" {
  count = var.access_log_bucket == null ? 0 : 1

  bucket        = aws_s3_bucket.this.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3-access/${var.name}/"
}
