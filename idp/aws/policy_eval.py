"""A role trust policy held against a token's request context, as STS evaluates it.

The request context holds what STS takes from an OIDC token: `<provider>:aud` (the audience
that is a client ID, or `azp` when present), `:sub`, `:amr`, `:azp`, and from the session-tags
claim `aws:RequestTag/<key>`, `aws:TagKeys` and `sts:TransitiveTagKeys`; nothing else of the
token. Each statement applies when its Principal, Action and every condition match; an
applying Deny refuses whatever an Allow says; a token with session tags also needs
`sts:TagSession`. A condition on another claim (`<provider>:image`) names a key that is never
present: it is reported as such, with the way to really enforce that claim.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from idp.aws.checks import (
    FAIL,
    INFO,
    PASS,
    UNKNOWN,
    WARN,
    Check,
    Tri,
    all_of,
    any_of,
    negate,
    status_of,
)
from idp.aws.conditions import (
    Operator,
    OperatorError,
    evaluate,
    has_variable,
    parse_operator,
    policy_values,
)
from idp.aws.trust_policy import ASSUME_ROLE, TAG_SESSION, string_like, tag_pattern
from idp.tokens.vocabulary import CONTEXT_CLAIMS, DEFAULT_SUBJECT_CLAIMS, REGISTERED_CLAIMS

TAGS_CLAIM = "https://aws.amazon.com/tags"
SOURCE_IDENTITY_CLAIM = "https://aws.amazon.com/source_identity"
TOKEN_KEYS = ("aud", "sub", "amr", "azp")  # the only claims STS puts in the request context
MULTIVALUED = frozenset({"amr", "aws:tagkeys", "sts:transitivetagkeys"})


def audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


def matched_audience(claims: Mapping[str, Any], client_ids: Sequence[str]) -> str | None:
    """What STS compares with the provider's client IDs: `azp` when present, else the
    audience (of several, the one that is a client ID)."""
    azp = claims.get("azp")
    if isinstance(azp, str) and azp:
        return azp
    found = audiences(claims)
    for audience in found:
        if audience in client_ids:
            return audience
    return found[0] if found else None


def session_tags(claims: Mapping[str, Any]) -> dict[str, str]:
    raw = claims.get(TAGS_CLAIM)
    if not isinstance(raw, dict) or not isinstance(raw.get("principal_tags"), dict):
        return {}
    tags = {}
    for key, value in raw["principal_tags"].items():
        values = value if isinstance(value, list) else [value]
        if values and isinstance(values[0], str):
            tags[str(key)] = values[0]
    return tags


# --- the request context ---------------------------------------------------------------


@dataclass
class Context:
    """What STS puts in the request context, keyed by lower-case key name."""

    provider_url: str
    values: dict[str, list[str]]
    session_name_known: bool
    # The token's own context claims (a claims file declares more than the built-ins).
    token_claims: frozenset[str] = frozenset()

    def lookup(self, key: str) -> tuple[str, list[str] | None]:
        """(kind, values): kind is `known`, `claim` (a claim AWS does not evaluate),
        `foreign` (another provider's key) or `unknown` (not judged here)."""
        lowered = key.lower()
        prefix = self.provider_url.lower() + ":"
        if lowered.startswith(prefix):
            claim = lowered[len(prefix) :]
            if claim in TOKEN_KEYS:
                return "known", self.values.get(lowered)
            return "claim", None
        if lowered.startswith(("aws:requesttag/", "aws:tagkeys", "sts:transitivetagkeys")):
            return "known", self.values.get(lowered)
        if lowered == "sts:sourceidentity":
            return "known", self.values.get(lowered)
        if lowered == "sts:rolesessionname":
            if self.session_name_known:
                return "known", self.values.get(lowered)
            return "unknown", None
        head = lowered.partition(":")[0]
        if ":" in lowered and ("." in head or "/" in head):
            return "foreign", None
        return "unknown", None


def request_context(
    claims: Mapping[str, Any],
    provider_url: str,
    client_ids: Sequence[str],
    session_name: str | None,
) -> Context:
    values: dict[str, list[str]] = {}
    url = provider_url.lower()
    audience = matched_audience(claims, client_ids)
    if audience is not None:
        values[f"{url}:aud"] = [audience]
    for name in ("sub", "azp"):
        if isinstance(claims.get(name), str):
            values[f"{url}:{name}"] = [claims[name]]
    amr = claims.get("amr")
    if isinstance(amr, list):
        values[f"{url}:amr"] = [str(a) for a in amr]
    elif isinstance(amr, str):
        values[f"{url}:amr"] = [amr]
    tags = session_tags(claims)
    for key, value in tags.items():
        values[f"aws:requesttag/{key.lower()}"] = [value]
    if tags:
        values["aws:tagkeys"] = list(tags)
    raw = claims.get(TAGS_CLAIM)
    if isinstance(raw, dict) and isinstance(raw.get("transitive_tag_keys"), list):
        values["sts:transitivetagkeys"] = [str(k) for k in raw["transitive_tag_keys"]]
    if isinstance(claims.get(SOURCE_IDENTITY_CLAIM), str):
        values["sts:sourceidentity"] = [claims[SOURCE_IDENTITY_CLAIM]]
    if session_name is not None:
        values["sts:rolesessionname"] = [session_name]
    declared = frozenset(
        name for name in claims if isinstance(name, str) and name not in REGISTERED_CLAIMS
    )
    return Context(provider_url, values, session_name is not None, declared)


# --- the trust policy ------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def statements(policy: Any) -> list[Any]:
    if not isinstance(policy, dict):
        return []
    return _as_list(policy.get("Statement"))


def federated_principals(policy: Any) -> list[str]:
    """Every `Federated` principal the policy names, in order."""
    found = []
    for statement in statements(policy):
        principal = statement.get("Principal") if isinstance(statement, dict) else None
        if isinstance(principal, dict):
            found += [str(p) for p in _as_list(principal.get("Federated"))]
    return found


def _action_matches(patterns: Sequence[Any], action: str) -> bool:
    # Action names are case-insensitive; `*` and `?` are wildcards.
    return any(string_like(str(p).lower()).fullmatch(action.lower()) is not None for p in patterns)


def _statement_action(statement: dict[str, Any], action: str) -> tuple[bool, str]:
    if "NotAction" in statement:
        patterns = _as_list(statement["NotAction"])
        return (not _action_matches(patterns, action), f"NotAction {patterns}")
    patterns = _as_list(statement.get("Action"))
    return _action_matches(patterns, action), f"Action {patterns}"


def _principal(statement: dict[str, Any], provider_arn: str) -> tuple[Tri, str, str]:
    """(matches, detail, fix) for the request's federated principal `provider_arn`."""
    fix = f'name the provider: "Principal": {{"Federated": "{provider_arn}"}}'
    negate = "NotPrincipal" in statement
    principal = statement.get("NotPrincipal" if negate else "Principal")
    if principal is None:
        return False, "no Principal", fix
    if principal == "*":
        matches = True
        detail = 'Principal "*" (anyone: make sure the conditions pin the provider)'
    elif isinstance(principal, dict):
        federated = [str(p) for p in _as_list(principal.get("Federated"))]
        anyone = "*" in [str(p) for p in _as_list(principal.get("AWS"))]
        matches = provider_arn in federated or "*" in federated or anyone
        detail = f"Federated {federated}" if federated else f"Principal {principal}"
        near = [p for p in federated if p.lower().rstrip("/") == provider_arn.lower().rstrip("/")]
        if not matches and near:
            detail += f" differs from {provider_arn} only by case or a trailing '/'"
    else:
        return False, f"Principal {principal!r} is not valid", fix
    if negate:
        return not matches, f"NotPrincipal: {detail}", fix
    return matches, detail + ("" if matches else f", not {provider_arn}"), fix


@dataclass
class StatementResult:
    index: int
    effect: str
    checks: list[Check]  # principal, action, conditions (in order)
    principal: Tri
    actions: dict[str, bool]
    conditions: Tri

    def applies(self, action: str) -> Tri:
        return all_of([self.principal, self.actions.get(action, False), self.conditions])

    def failures(self, action: str) -> list[Check]:
        """The failing checks that keep this statement from applying to `action`."""
        other = "action" if action == TAG_SESSION else "tag_session"
        skip = f"policy.{self.index}.{other}"
        return [c for c in self.checks if c.status == FAIL and c.check != skip]


def _condition_checks(
    index: int, conditions: Any, context: Context, effect: str, variables: bool
) -> tuple[list[Check], Tri]:
    checks: list[Check] = []
    results: list[Tri] = []
    if conditions is None:
        return checks, True
    if not isinstance(conditions, dict):
        check = Check(f"policy.{index}.condition", FAIL, "Condition is not an object", "")
        return [check], False
    for operator_name, block in conditions.items():
        try:
            operator = parse_operator(str(operator_name))
        except OperatorError as exc:
            checks.append(
                Check(
                    f"policy.{index}.condition.{operator_name}",
                    FAIL,
                    str(exc),
                    "IAM refuses this policy (MalformedPolicyDocument): fix the operator name",
                )
            )
            results.append(False)
            continue
        if not isinstance(block, dict):
            checks.append(
                Check(f"policy.{index}.condition.{operator_name}", FAIL, "not a key map", "")
            )
            results.append(False)
            continue
        for key, raw in block.items():
            check, result = _condition(index, operator, str(key), raw, context, variables)
            if effect == "Deny" and check.status in (PASS, FAIL, WARN):
                check.status = INFO
                check.detail = ("matches: " if result else "does not match: ") + check.detail
                check.fix = ""
            checks.append(check)
            results.append(result)
    return checks, all_of(results)


def _condition(
    index: int, operator: Operator, key: str, raw: Any, context: Context, variables: bool
) -> tuple[Check, Tri]:
    name = f"policy.{index}.condition.{operator.name}.{key}"
    wanted = policy_values(raw)
    kind, actual = context.lookup(key)
    shown = json.dumps(wanted[0] if len(wanted) == 1 else wanted)
    if variables and has_variable(wanted):
        return Check(name, UNKNOWN, f"{shown} holds a policy variable, not judged here", ""), None
    if kind == "unknown":
        return (
            Check(
                name,
                UNKNOWN,
                f"{key} cannot be judged offline: it depends on the call, not on the token",
                "check it by hand, or drop it from the trust policy",
            ),
            None,
        )
    if not operator.evaluated:
        return (
            Check(
                name,
                UNKNOWN,
                f"{operator.base} is not evaluated here ({key} {shown})",
                "check this condition by hand",
            ),
            None,
        )
    result = evaluate(operator, actual, wanted)
    seen = "absent" if actual is None else json.dumps(actual[0] if len(actual) == 1 else actual)
    detail = f"{key} is {seen}, wants {shown}"
    if kind == "claim":
        claim = key[len(context.provider_url) + 1 :]
        fix = _claim_fix(claim, operator, wanted, context.token_claims)
        if result:
            return (
                Check(
                    name,
                    WARN,
                    f"always true: AWS does not evaluate the claim {claim!r} (only aud, sub, "
                    "amr, azp reach a trust policy), so this condition constrains nothing",
                    fix,
                ),
                result,
            )
        return (
            Check(
                name,
                FAIL,
                f"never true: AWS does not evaluate the claim {claim!r} (only aud, sub, amr, "
                "azp reach a trust policy)",
                fix,
            ),
            result,
        )
    if kind == "foreign":
        detail = f"{key} belongs to another provider, so it is absent; wants {shown}"
    status = status_of(result)
    warnings = _hazards(operator, key, actual, wanted, result)
    if result is True and warnings:
        status = WARN
    if warnings:
        detail += "; " + "; ".join(warnings)
    fix = "" if result else _condition_fix(operator, key, actual, wanted, context)
    if status == WARN and not fix:
        fix = "use the operator AWS documents for this key (see docs/aws.md)"
    return Check(name, status, detail, fix), result


def _hazards(
    operator: Operator, key: str, actual: list[str] | None, wanted: Sequence[str], result: Tri
) -> list[str]:
    notes = []
    multivalued = key.lower().rsplit(":", 1)[-1] in MULTIVALUED or key.lower() in MULTIVALUED
    if operator.qualifier == "ForAllValues" and not actual:
        notes.append("ForAllValues on an absent key is always true: it admits any token")
    elif operator.qualifier and not multivalued:
        notes.append(f"{operator.qualifier} is meant for multivalued keys; {key} has one value")
    if not operator.qualifier and multivalued and actual and len(actual) > 1:
        notes.append(f"{key} is multivalued: AWS requires ForAnyValue: or ForAllValues:")
    if (
        result is False
        and operator.base in ("StringEquals", "StringEqualsIgnoreCase")
        and any(ch in w for w in wanted for ch in "*?")
    ):
        notes.append(
            f"{operator.base} compares literally: '*' and '?' are wildcards only in StringLike"
        )
    return notes


def _condition_fix(
    operator: Operator,
    key: str,
    actual: list[str] | None,
    wanted: Sequence[str],
    context: Context,
) -> str:
    if operator.base in ("StringEquals", "StringEqualsIgnoreCase") and any(
        ch in w for w in wanted for ch in "*?"
    ):
        return f'use StringLike for a pattern: "StringLike": {{"{key}": {json.dumps(wanted[0])}}}'
    lowered = key.lower()
    url = context.provider_url.lower()
    if actual is None:
        if lowered.startswith("aws:requesttag/"):
            tag = key.split("/", 1)[1]
            return (
                f"the token carries no session tag {tag!r}: set IDP_AWS_SESSION_TAGS to include "
                f"{tag} on the issuer"
            )
        return f"the request has no {key}: match a key the request has"
    if lowered == f"{url}:sub":
        sub = actual[0]
        if "%3A" in sub and any(string_like(w).fullmatch(sub.replace("%3A", ":")) for w in wanted):
            return (
                "inside sub a ':' in a value is written %3A: write the pattern with %3A, as "
                "`idp aws trust-policy` does"
            )
        return (
            f"the token's sub is {sub!r}: write a pattern that matches it, e.g. with "
            "`idp aws trust-policy --repo ORG/REPO ...`"
        )
    if lowered == f"{url}:aud":
        return (
            f"the token's audience is {actual[0]!r}: ask for {wanted[0]!r} "
            f"(--audience {wanted[0]}) or change the condition"
        )
    return f"the request has {key} = {actual}: change the condition or what is sent"


def _claim_fix(
    claim: str,
    operator: Operator,
    wanted: Sequence[str],
    token_claims: frozenset[str] = frozenset(),
) -> str:
    # A claim of the token (built in, or declared by the issuer's claims file) can reach AWS
    # through sub or a session tag; any other name is nothing the issuer sends.
    if claim not in CONTEXT_CLAIMS and claim not in token_claims:
        return f"AWS never sees {claim!r}: match sub, or a session tag, instead"
    value = wanted[0] if wanted else "*"
    tag_value = tag_pattern(value) or value
    tag_op = "StringLike" if any(c in tag_value for c in "*?") else "StringEquals"
    flag = {
        "commands": f"--commands {value}",
        "image_name": f"--image {value}",
        "ref": f"--ref {value}",
        "event": f"--event {value}",
    }.get(claim, f"--claim {claim}={value}")
    return (
        f"put {claim} in session tags (IDP_AWS_SESSION_TAGS={claim}) and match "
        f'"{tag_op}": {{"aws:RequestTag/{claim}": "{tag_value}"}} with sts:TagSession allowed, '
        f"or put it in sub (IDP_SUBJECT_CLAIMS={','.join((*DEFAULT_SUBJECT_CLAIMS, claim))}); "
        f"`idp aws trust-policy {flag} ...` writes either"
    )


def policy_checks(
    policy: Any,
    claims: Mapping[str, Any] | None,
    provider_arn: str,
    client_ids: Sequence[str],
    provider_url: str,
    session_name: str | None,
) -> tuple[list[Check], Tri, Check | None]:
    """The trust policy's checks, its result, and the check that decides a refusal."""
    all_statements = statements(policy)
    if not all_statements or not all(isinstance(s, dict) for s in all_statements):
        check = Check(
            "policy.document",
            FAIL,
            "the trust policy has no statements",
            "give the role's trust policy (AssumeRolePolicyDocument)",
        )
        return [check], False, check
    if claims is None:
        check = Check("policy.decision", UNKNOWN, "not evaluated: the token could not be read", "")
        return [check], None, check
    context = request_context(claims, provider_url, client_ids, session_name)
    variables = isinstance(policy, dict) and policy.get("Version") == "2012-10-17"
    needs_tags = TAGS_CLAIM in claims
    checks: list[Check] = []
    results: list[StatementResult] = []
    for index, statement in enumerate(all_statements, 1):
        evaluated = _statement(index, statement, context, provider_arn, needs_tags, variables)
        results.append(evaluated)
        checks += evaluated.checks

    needed = [ASSUME_ROLE] + ([TAG_SESSION] if needs_tags else [])
    denies = [r for r in results if r.effect == "Deny"]
    allows = [r for r in results if r.effect == "Allow"]
    deciding: Check | None = None
    for deny in denies:
        applies = any_of(deny.applies(a) for a in needed)
        check = Check(
            f"policy.{deny.index}.deny",
            FAIL if applies else PASS if applies is False else UNKNOWN,
            "this Deny applies: an explicit Deny beats any Allow"
            if applies
            else "this Deny does not apply"
            if applies is False
            else "whether this Deny applies cannot be judged here",
            "narrow the Deny's conditions, or ask with a token it does not match",
        )
        checks.append(check)
        if applies and deciding is None:
            deciding = check
    denied = any_of(any_of(d.applies(a) for a in needed) for d in denies)

    allowed_assume = any_of(r.applies(ASSUME_ROLE) for r in allows)
    allowed_tags: Tri = True
    if needs_tags:
        allowed_tags = any_of(r.applies(TAG_SESSION) for r in allows)
        if allowed_assume is not False:
            check = Check(
                "policy.tag_session",
                status_of(allowed_tags),
                "the token carries session tags, so STS also needs sts:TagSession: "
                + ("allowed" if allowed_tags else "no statement that lets it in allows it"),
                'add "sts:TagSession" to the Action of the statement that lets the token in '
                "(`idp aws trust-policy` does when the issuer sends tags)",
            )
            checks.append(check)
            if allowed_tags is False and deciding is None and allowed_assume:
                deciding = check

    result = all_of([negate(denied), allowed_assume, allowed_tags])
    summary = Check(
        "policy.decision",
        status_of(result),
        {
            True: "a statement allows the token and no Deny applies",
            False: "the trust policy refuses the token",
            None: "the verdict depends on a condition not judged here",
        }[result],
        "" if result else "see the checks marked FAIL or ?? above",
    )
    checks.append(summary)
    if deciding is None and result is not True:
        if result is None and denied is None:
            deciding = next(c for c in checks if c.check.endswith(".deny") and c.ok is None)
        else:
            deciding = _nearest(allows, needed, result) or summary
    return checks, result, deciding


def _nearest(allows: list[StatementResult], needed: list[str], result: Tri) -> Check | None:
    """The check that keeps the closest Allow statement from letting the token in."""
    want = FAIL if result is False else UNKNOWN
    best: tuple[int, Check] | None = None
    for statement in allows:
        for action in needed:
            if statement.applies(action) is True:
                continue
            if want == FAIL:
                failing = statement.failures(action)
            elif statement.applies(action) is None:
                failing = [c for c in statement.checks if c.status == UNKNOWN]
            else:
                break
            if failing and (best is None or len(failing) < best[0]):
                best = (len(failing), failing[0])
            break
    return best[1] if best else None


def _statement(
    index: int,
    statement: dict[str, Any],
    context: Context,
    provider_arn: str,
    needs_tags: bool,
    variables: bool,
) -> StatementResult:
    effect = statement.get("Effect")
    sid = f" (Sid {statement['Sid']})" if statement.get("Sid") else ""
    checks = [
        Check(
            f"policy.{index}.effect",
            INFO if effect in ("Allow", "Deny") else FAIL,
            f"{effect}{sid}",
            "" if effect in ("Allow", "Deny") else 'Effect must be "Allow" or "Deny"',
        )
    ]
    principal, detail, fix = _principal(statement, provider_arn)
    checks.append(Check(f"policy.{index}.principal", status_of(principal), detail, fix))
    actions = {}
    matches, shown = _statement_action(statement, ASSUME_ROLE)
    actions[ASSUME_ROLE] = matches
    checks.append(
        Check(
            f"policy.{index}.action",
            PASS if matches else FAIL,
            f"{shown} {'covers' if matches else 'does not cover'} {ASSUME_ROLE}",
            f'add "{ASSUME_ROLE}" to Action',
        )
    )
    if needs_tags:
        matches, shown = _statement_action(statement, TAG_SESSION)
        actions[TAG_SESSION] = matches
        checks.append(
            Check(
                f"policy.{index}.tag_session",
                PASS if matches else FAIL,
                f"{shown} {'covers' if matches else 'does not cover'} {TAG_SESSION}",
                f'add "{TAG_SESSION}" to Action: the token carries session tags',
            )
        )
    condition_checks, conditions = _condition_checks(
        index, statement.get("Condition"), context, str(effect), variables
    )
    checks += condition_checks
    if effect == "Deny":
        for check in checks[1:3]:
            if check.status in (PASS, FAIL):
                check.status = INFO
                check.fix = ""
        for check in checks:
            if check.check.endswith(".tag_session") and check.status in (PASS, FAIL):
                check.status = INFO
                check.fix = ""
    return StatementResult(
        index=index,
        effect=str(effect) if effect in ("Allow", "Deny") else "Invalid",
        checks=checks,
        principal=principal,
        actions=actions,
        conditions=conditions,
    )
