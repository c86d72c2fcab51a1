data "aws_iam_policy_document" "app_deploy_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"]

    principals {
      type        = "Federated"
      identifiers = ["arn:aws:iam::123456789012:oidc-provider/ci.example.com/_services/token"]
    }

    condition {
      test     = "StringEquals"
      variable = "ci.example.com/_services/token:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringLike"
      variable = "ci.example.com/_services/token:sub"
      values   = ["repo:octo-org/*:ref:refs/heads/main:event:push:image_name:registry%3A5000/team/app"]
    }

    condition {
      test     = "StringLike"
      variable = "aws:RequestTag/image_tag"
      values   = ["1.2*"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/commands"
      values   = ["false"]
    }
  }
}

resource "aws_iam_role" "app_deploy" {
  name               = "app-deploy"
  assume_role_policy = data.aws_iam_policy_document.app_deploy_trust.json
}
