data "aws_iam_policy_document" "idp_pipeline_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = ["arn:aws:iam::123456789012:oidc-provider/ci.example.com/_services/token"]
    }

    condition {
      test     = "StringEquals"
      variable = "ci.example.com/_services/token:aud"
      values   = ["deploy.example.com"]
    }

    condition {
      test     = "StringLike"
      variable = "ci.example.com/_services/token:sub"
      values   = ["repo:octo-org/octo-repo:ref:*:event:*"]
    }
  }
}

resource "aws_iam_role" "idp_pipeline" {
  name               = "idp-pipeline"
  assume_role_policy = data.aws_iam_policy_document.idp_pipeline_trust.json
}
