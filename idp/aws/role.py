"""An IAM role with a trust policy from `trust_policy`, created or brought up to date."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from idp.aws.iam import aws_errors, error_code
from idp.aws.trust_policy import TrustPolicy, check_role_name

PERMISSIONS = (
    "iam:CreateRole, iam:GetRole, iam:UpdateAssumeRolePolicy and (with --policy-arn) "
    "iam:AttachRolePolicy"
)


@dataclass(frozen=True)
class RoleRequest:
    name: str
    policy: TrustPolicy
    description: str = ""
    max_session_duration: int = 3600
    policy_arns: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoleChange:
    arn: str
    created: bool
    attached: tuple[str, ...] = ()

    def summary(self) -> list[str]:
        lines = [
            f"created {self.arn}" if self.created else f"updated the trust policy of {self.arn}"
        ]
        return lines + [f"attached {arn}" for arn in self.attached]


def apply_role(iam: Any, request: RoleRequest) -> RoleChange:
    """Create the role with the trust policy, or replace the trust policy of the existing one.

    Only the trust policy is replaced on an existing role: its permissions, tags and session
    duration are the operator's and stay as they are.
    """
    name = check_role_name(request.name)
    document = json.dumps(request.policy.document(), separators=(",", ":"))
    created = True
    with aws_errors(f"create the IAM role {name}", PERMISSIONS):
        try:
            arguments: dict[str, Any] = {
                "RoleName": name,
                "AssumeRolePolicyDocument": document,
                "MaxSessionDuration": request.max_session_duration,
            }
            if request.description:
                arguments["Description"] = request.description
            arn = str(iam.create_role(**arguments)["Role"]["Arn"])
        except ClientError as exc:
            if error_code(exc) != "EntityAlreadyExists":
                raise
            created = False
    if not created:
        with aws_errors(f"update the trust policy of the IAM role {name}", PERMISSIONS):
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=document)
            arn = str(iam.get_role(RoleName=name)["Role"]["Arn"])
    done = "was created" if created else "exists and its trust policy was updated"
    for policy_arn in request.policy_arns:
        # The role is already there: say so, or the operator thinks nothing happened.
        action = (
            f"attach {policy_arn} to the IAM role {name} (the role {arn} {done}; fix the "
            "policy ARN and run the command again, it is idempotent)"
        )
        with aws_errors(action, PERMISSIONS):
            iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
    return RoleChange(arn=arn, created=created, attached=request.policy_arns)
