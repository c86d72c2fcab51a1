"""The IAM OIDC provider for the issuer: created, or brought up to date, never duplicated.

AWS stores a provider under its URL without the scheme (`ci.example.com/_services/token`) and
accepts a token only when `iss` is `https://` + that URL exactly, so the URL is checked here
for everything AWS would refuse or that could never match the issuer's `iss`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from idp.aws import DEFAULT_AUDIENCE
from idp.aws.errors import ProviderUrlError
from idp.aws.iam import aws_errors, error_code
from idp.tokens.tags import TAG_VALUE_MAX, is_valid_tag_key

MAX_THUMBPRINTS = 5  # AWS's limit per provider
MAX_AUDIENCES = 100
MAX_URL_LENGTH = 255

PERMISSIONS = (
    "iam:ListOpenIDConnectProviders, iam:GetOpenIDConnectProvider, "
    "iam:CreateOpenIDConnectProvider, iam:AddClientIDToOpenIDConnectProvider, "
    "iam:UpdateOpenIDConnectProviderThumbprint and iam:TagOpenIDConnectProvider"
)

_THUMBPRINT = re.compile(r"[0-9a-f]{40}")
_EXAMPLE = "https://ci.example.com/_services/token"


@dataclass(frozen=True)
class ProviderRequest:
    url: str  # https://host/path, as the tokens' `iss`
    audiences: tuple[str, ...]
    thumbprints: tuple[str, ...]
    tags: tuple[tuple[str, str], ...] = ()
    issuer: str | None = None  # the discovery document's `issuer`, when it was fetched


@dataclass(frozen=True)
class ProviderChange:
    arn: str
    created: bool
    added_audiences: tuple[str, ...] = ()
    replaced_thumbprints: tuple[str, ...] | None = None  # the old list, when it changed
    tagged: tuple[str, ...] = ()
    other_audiences: tuple[str, ...] = ()  # registered before, not asked for: left in place

    def summary(self) -> list[str]:
        """What changed, one line each, for the operator."""
        if self.created:
            return [f"created {self.arn}"]
        lines = [f"added audience {a}" for a in self.added_audiences]
        if self.replaced_thumbprints is not None:
            old = ", ".join(self.replaced_thumbprints) or "none"
            lines.append(f"replaced thumbprints (were {old})")
        lines += [f"set tag {key}" for key in self.tagged]
        if self.other_audiences:
            lines.append(
                "kept audiences not asked for: "
                + ", ".join(self.other_audiences)
                + " (remove them in IAM if no role uses them)"
            )
        return lines or [f"{self.arn} is up to date"]


def stored_url(url: str, issuer: str | None = None) -> str:
    """`url` as AWS stores it (host and path), or `ProviderUrlError` saying why AWS would not.

    `issuer` is the `issuer` of the discovery document when it was fetched: the tokens' `iss`.
    """
    stored = check_url_syntax(url)  # a trailing '/' is refused there, before any network
    if issuer is not None and url != issuer:
        raise ProviderUrlError(
            f"the discovery document at {url!r} names the issuer {issuer!r}: AWS compares "
            f"the tokens' iss with the provider URL exactly, so register {issuer!r}"
        )
    return stored


def check_url_syntax(url: str) -> str:
    """The checks that need no network: what AWS refuses in any provider URL."""
    fix = f"give the issuer URL exactly as IDP_ISSUER, e.g. {_EXAMPLE}"
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ProviderUrlError(
            f"{url!r} is not https: AWS accepts only https:// provider URLs; publish the "
            "issuer behind TLS and set IDP_ISSUER to its https URL"
        )
    if not parts.hostname:
        raise ProviderUrlError(f"{url!r} has no host: {fix}")
    if parts.username is not None or parts.password is not None:
        raise ProviderUrlError(f"{url!r} carries credentials: remove the user:password@ part")
    try:
        port = parts.port
    except ValueError:
        raise ProviderUrlError(f"{url!r} has a malformed port: {fix}") from None
    if port is not None or parts.netloc.endswith(":"):
        raise ProviderUrlError(
            f"{url!r} has a port, which AWS does not accept in a provider URL: publish the "
            "issuer on port 443 (e.g. behind the ingress) and set IDP_ISSUER without a port"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ProviderUrlError(
            f"{url!r} has a query or fragment, which AWS refuses in a provider URL: {fix}"
        )
    if parts.path.endswith("/"):
        raise ProviderUrlError(
            f"{url!r} ends with '/': AWS matches a provider to the tokens' iss exactly, and "
            "IDP_ISSUER never ends with '/'; drop the trailing '/'"
        )
    if len(url) > MAX_URL_LENGTH:
        raise ProviderUrlError(
            f"{url!r} is longer than AWS's {MAX_URL_LENGTH} characters: use a shorter issuer path"
        )
    return parts.netloc + parts.path


def normalize_thumbprint(value: str) -> str:
    """A thumbprint as AWS stores it: 40 lowercase hex characters, colons dropped."""
    cleaned = value.strip().replace(":", "").lower()
    if not _THUMBPRINT.fullmatch(cleaned):
        raise ProviderUrlError(
            f"thumbprint {value!r} is not 40 hex characters: give the SHA-1 thumbprint that "
            "`idp thumbprint` prints, or `auto` to compute it"
        )
    return cleaned


def check_request(request: ProviderRequest) -> None:
    if not request.audiences:
        raise ProviderUrlError(f"no audience given: pass --audience {DEFAULT_AUDIENCE}")
    if len(request.audiences) > MAX_AUDIENCES:
        raise ProviderUrlError(f"AWS takes at most {MAX_AUDIENCES} audiences per provider")
    for audience in request.audiences:
        if not 1 <= len(audience) <= 255:
            raise ProviderUrlError(
                f"audience {audience!r} must be 1-255 characters long: AWS refuses it"
            )
    if not 1 <= len(request.thumbprints) <= MAX_THUMBPRINTS:
        raise ProviderUrlError(
            f"{len(request.thumbprints)} thumbprints given: AWS takes 1 to {MAX_THUMBPRINTS}"
        )
    for key, value in request.tags:
        if not is_valid_tag_key(key):
            raise ProviderUrlError(
                f"tag key {key!r} is not one AWS accepts: use 1-128 letters, digits, spaces "
                "or _.:/=+-@, not starting with aws:"
            )
        if len(value) > TAG_VALUE_MAX:
            raise ProviderUrlError(f"tag {key!r} has a value over {TAG_VALUE_MAX} characters")


def find_provider(iam: Any, stored: str) -> str | None:
    """The ARN of the provider stored under `stored` (host and path), if there is one."""
    with aws_errors("list the IAM OIDC providers", PERMISSIONS):
        listing = iam.list_open_id_connect_providers()
    for entry in listing.get("OpenIDConnectProviderList", []):
        arn = str(entry.get("Arn", ""))
        if arn.partition(":oidc-provider/")[2] == stored:
            return arn
    return None


def register_provider(iam: Any, request: ProviderRequest) -> ProviderChange:
    """Create the provider, or add what it lacks; never remove what others may rely on."""
    check_request(request)
    stored = stored_url(request.url, issuer=request.issuer)
    arn = find_provider(iam, stored)
    if arn is None:
        arn = _create(iam, request)
        if arn is not None:
            return ProviderChange(arn=arn, created=True)
        # Someone created it between our listing and our call: update theirs.
        arn = find_provider(iam, stored)
        if arn is None:
            raise ProviderUrlError(
                f"AWS says a provider for {stored} exists but does not list it: check "
                "`aws iam list-open-id-connect-providers` for one differing only in case"
            )
    return _update(iam, arn, request)


def _create(iam: Any, request: ProviderRequest) -> str | None:
    arguments: dict[str, Any] = {
        "Url": request.url,
        "ClientIDList": list(request.audiences),
        "ThumbprintList": list(request.thumbprints),
    }
    if request.tags:
        arguments["Tags"] = [{"Key": k, "Value": v} for k, v in request.tags]
    with aws_errors("create the IAM OIDC provider", PERMISSIONS):
        try:
            response = iam.create_open_id_connect_provider(**arguments)
        except ClientError as exc:
            if error_code(exc) == "EntityAlreadyExists":
                return None
            raise
    return str(response["OpenIDConnectProviderArn"])


def _update(iam: Any, arn: str, request: ProviderRequest) -> ProviderChange:
    with aws_errors("read the IAM OIDC provider", PERMISSIONS):
        current = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn)
    registered = [str(a) for a in current.get("ClientIDList", [])]
    missing = [a for a in request.audiences if a not in registered]
    with aws_errors("add an audience to the IAM OIDC provider", PERMISSIONS):
        for audience in missing:
            iam.add_client_id_to_open_id_connect_provider(
                OpenIDConnectProviderArn=arn, ClientID=audience
            )

    old_thumbprints = tuple(str(t).lower() for t in current.get("ThumbprintList", []))
    replaced = None
    if set(old_thumbprints) != set(request.thumbprints):
        # Replace rather than merge: a thumbprint of a CA the issuer left must stop counting.
        with aws_errors("update the IAM OIDC provider's thumbprints", PERMISSIONS):
            iam.update_open_id_connect_provider_thumbprint(
                OpenIDConnectProviderArn=arn, ThumbprintList=list(request.thumbprints)
            )
        replaced = old_thumbprints

    current_tags = {str(t["Key"]): str(t["Value"]) for t in current.get("Tags", [])}
    changed_tags = [(k, v) for k, v in request.tags if current_tags.get(k) != v]
    if changed_tags:
        with aws_errors("tag the IAM OIDC provider", PERMISSIONS):
            iam.tag_open_id_connect_provider(
                OpenIDConnectProviderArn=arn,
                Tags=[{"Key": k, "Value": v} for k, v in changed_tags],
            )

    return ProviderChange(
        arn=arn,
        created=False,
        added_audiences=tuple(missing),
        replaced_thumbprints=replaced,
        tagged=tuple(k for k, _ in changed_tags),
        other_audiences=tuple(a for a in registered if a not in request.audiences),
    )
