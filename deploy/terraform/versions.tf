# Pinned: Terraform 1.6+ and the AWS provider 6.x. No .terraform.lock.hcl is committed: `terraform init`
# could not run here (no terraform binary or provider can be downloaded on the machines this project is
# built on). Commit the lock file your first `terraform init` writes.
terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Project = "evergreen", ManagedBy = "terraform" }, var.tags)
  }
}
