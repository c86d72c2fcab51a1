"""Container image references, by the grammar of distribution/reference (Docker's).

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] path-component [ "/" path-component ]*
    domain    := host [ ":" port ]

The first component is a registry only when it looks like one (has a `.` or a `:`, or is
`localhost`), so `registry:5000/img:tag` is the image `registry:5000/img` with tag `tag` —
the case Vela's own parser gets wrong by splitting at the first colon.

Beyond the grammar, a reference is accepted exactly when Docker's `ParseNormalizedNamed`
accepts it: not a bare 64-hex image id; a repository path (the name without its registry,
`library/` prepended on Docker Hub for a one-component name) of at most 255 characters; a
digest that go-digest validates (`sha256`, `sha384` or `sha512` with lowercase hex of that
hash's length; the grammar alone admits any algorithm and 32+ hex digits of either case).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?"
    rf"(?:@(?P<digest>{_DIGEST}))?",
    re.ASCII,
)

NAME_MAX = 255
# go-digest's registered algorithms and the length of their (lowercase) hex encoding.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
_DOCKER_HUB = ("docker.io", "index.docker.io")


class InvalidImageReference(ValueError):
    pass


@dataclass(frozen=True)
class ImageReference:
    name: str  # as written: registry (with port) and path, no tag, no digest
    tag: str  # "latest" when none is given, as Docker assumes
    digest: str | None
    tag_given: bool

    def __str__(self) -> str:
        text = self.name
        if self.tag_given:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _looks_like_domain(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or (component != component.lower())
    )


def _repository_path(name: str, domain: str | None) -> str:
    """The path Docker measures against NAME_MAX: the name without a registry, as normalized."""
    if domain is not None and _looks_like_domain(domain):
        path = name[len(domain) + 1 :]
        hub = domain in _DOCKER_HUB
    else:
        path, hub = name, True
    return f"library/{path}" if hub and "/" not in path else path


def _digest_problem(digest: str) -> str | None:
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        return f"digest algorithm {algorithm!r} is not one of {', '.join(_DIGEST_HEX_LENGTHS)}"
    if len(encoded) != length or encoded != encoded.lower():
        return f"a {algorithm} digest is {length} lowercase hex digits"
    return None


def parse_image(reference: str) -> ImageReference:
    """Split a reference into name, tag and digest, or raise InvalidImageReference."""
    if _IDENTIFIER.fullmatch(reference):
        raise InvalidImageReference(
            f"{reference!r} is a 64-hex image id, not a reference: name the image, "
            "e.g. app@sha256:<hex>"
        )
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        raise InvalidImageReference(
            f"{reference!r} is not a valid image reference: expected "
            "[registry[:port]/]path[:tag][@algorithm:hex], lowercase path, e.g. "
            "registry.example.com:5000/team/app:1.2"
        )
    name = match["name"]
    domain = match["domain"]
    # `team/app`: a first component that is no registry is a path, and must then follow the
    # lowercase path grammar, which the name regex already checked for later components.
    if (
        domain is not None
        and not _looks_like_domain(domain)
        and not re.fullmatch(_PATH_COMPONENT, domain)
    ):
        raise InvalidImageReference(
            f"{reference!r} is not a valid image reference: {domain!r} is neither a "
            "registry host (it has no '.' or ':') nor a lowercase path component"
        )
    if len(_repository_path(name, domain)) > NAME_MAX:
        raise InvalidImageReference(
            f"the repository path in {reference[:80]!r}... is over {NAME_MAX} characters"
        )
    digest = match["digest"]
    problem = None if digest is None else _digest_problem(digest)
    if problem is not None:
        raise InvalidImageReference(f"{reference!r} is not a valid image reference: {problem}")
    tag = match["tag"]
    return ImageReference(name=name, tag=tag or "latest", digest=digest, tag_given=tag is not None)
