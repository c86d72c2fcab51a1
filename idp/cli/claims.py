"""`idp claims show`: the effective claim policy, and what a build context would get from it.

It reads the same settings as `idp serve` (IDP_CLAIMS_FILE, IDP_SUBJECT_CLAIMS,
IDP_AWS_SESSION_TAGS) through the same loader, and judges a context with the same parser, so
what it prints is what the issuer would do: a way to see a new subject rule's effect before
the trust policies depend on it.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any

import click

from idp.config import Settings, load_settings
from idp.errors import InvalidRequest
from idp.tokens.claims import context_claims, session_tags, subject_of
from idp.tokens.context import DuplicateKey, load_json, parse_context
from idp.tokens.vocabulary import BUILTIN_FIELDS, DERIVED_CLAIMS, ClaimPolicy, Field


@click.group()
def claims() -> None:
    """The claim policy: the build context's fields, the token's claims, the subject rules."""


def _settings(claims_file: str | None) -> Settings:
    env = dict(os.environ)
    if claims_file is not None:
        env.pop("IDP_CLAIMS_FILE_FILE", None)
        env["IDP_CLAIMS_FILE"] = claims_file
    return load_settings(env)


def _rules(spec: Field) -> str:
    parts = []
    if spec.kind == "text":
        parts.append(f"max {spec.max_length}")
    if spec.allow_empty:
        parts.append("may be empty")
    if spec.no_colon:
        parts.append("no ':'")
    if spec.pattern is not None:
        parts.append(f"pattern {spec.pattern}")
    if spec.values is not None:
        parts.append(f"one of {', '.join(spec.values)}")
    return "; ".join(parts)


def _table(policy: ClaimPolicy) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, spec in policy.fields.items():
        rows.append(
            {
                "claim": name,
                "kind": spec.kind,
                "required": spec.required,
                "source": "built-in" if name in BUILTIN_FIELDS else "declared",
                "rules": _rules(spec),
            }
        )
        for derived in DERIVED_CLAIMS.get(name, ()):
            rows.append(
                {
                    "claim": derived,
                    "kind": "text",
                    "required": spec.required,
                    "source": f"from {name}",
                    "rules": "",
                }
            )
    return rows


def _subjects(settings: Settings) -> list[dict[str, Any]]:
    policy = settings.claim_policy
    rules: list[dict[str, Any]] = [
        {"rule": f"subjects[{rule.number}]", "match": dict(rule.match), "claims": list(rule.claims)}
        for rule in policy.subjects
    ]
    if not any(not rule.match for rule in policy.subjects):
        rules.append(
            {"rule": "IDP_SUBJECT_CLAIMS", "match": {}, "claims": list(settings.subject_claims)}
        )
    return rules


def _read_context(stream: IO[str], name: str) -> Any:
    # As the issuer reads a context (a key named twice is refused there too).
    try:
        return load_json(stream.read())
    except DuplicateKey as exc:
        raise InvalidRequest(f"--context {name} names {str(exc)[:40]!r} twice") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest(
            f"--context {name} is not JSON ({exc.__class__.__name__}): give the build context "
            "as a JSON object"
        ) from None


def _token(settings: Settings, data: Any) -> dict[str, Any]:
    ctx = parse_context(data, settings.claim_policy)
    token_claims = context_claims(ctx)
    rule = settings.claim_policy.rule_for(token_claims)
    result: dict[str, Any] = {
        "rule": f"subjects[{rule.number}]" if rule is not None else "IDP_SUBJECT_CLAIMS",
        "sub": subject_of(token_claims, settings),
        "claims": token_claims,
    }
    if settings.aws_session_tags:
        tags = session_tags(token_claims, settings.aws_session_tags)
        result["https://aws.amazon.com/tags"] = tags
    return result


@claims.command("show")
@click.option(
    "--context",
    "context_file",
    type=click.File("r", encoding="utf-8"),
    metavar="FILE|-",
    help="A build context (JSON, as POST /request-tokens takes it): print its claims and sub.",
)
@click.option(
    "--claims-file",
    metavar="FILE",
    help="The claims file to show instead of IDP_CLAIMS_FILE.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="text for people, json for scripts.",
)
def show(context_file: IO[str] | None, claims_file: str | None, output_format: str) -> None:
    """Print the effective claim table and subject rules (IDP_CLAIMS_FILE, IDP_SUBJECT_CLAIMS,
    IDP_AWS_SESSION_TAGS); with --context, the token claims and the sub that context gets.

    An invalid context is refused as POST /request-tokens refuses it (exit 1).
    """
    settings = _settings(claims_file)
    policy = settings.claim_policy
    token = None
    if context_file is not None:
        token = _token(settings, _read_context(context_file, context_file.name))

    if output_format == "json":
        document: dict[str, Any] = {
            "source": policy.source,
            "claims": _table(policy),
            "identity": list(policy.identity),
            "subjects": _subjects(settings),
            "session_tags": list(settings.aws_session_tags),
        }
        if token is not None:
            document["token"] = token
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return

    if token is not None:
        click.echo(f"sub: {token['sub']}")
        click.echo(f"rule: {token['rule']}")
        click.echo("claims:")
        for name, value in token["claims"].items():
            click.echo(f"  {name}: {value}")
        tags = token.get("https://aws.amazon.com/tags")
        if tags is not None:
            click.echo(f"session tags: {json.dumps(tags['principal_tags'], ensure_ascii=False)}")
        return

    click.echo(f"claims ({policy.source or 'built in: IDP_CLAIMS_FILE is not set'}):")
    rows = _table(policy)
    width = max(len(row["claim"]) for row in rows)
    for row in rows:
        required = "required" if row["required"] else "optional"
        line = f"  {row['claim']:<{width}}  {row['kind']:<4}  {required}  {row['source']}"
        click.echo(f"{line}  {row['rules']}".rstrip())
    click.echo(f"identity: {', '.join(policy.identity)}")
    click.echo("subjects (the first rule whose globs all match builds sub):")
    for rule in _subjects(settings):
        keys = ", ".join(rule["claims"])
        if rule["rule"] == "IDP_SUBJECT_CLAIMS":
            click.echo(f"  otherwise (IDP_SUBJECT_CLAIMS): {keys}")
            continue
        match = ", ".join(f"{k}={v}" for k, v in rule["match"].items()) or "(any)"
        click.echo(f"  {rule['rule']}: match {match} -> {keys}")
    click.echo(f"session tags: {', '.join(settings.aws_session_tags) or '(none)'}")


def register(cli: click.Group) -> None:
    cli.add_command(claims)
