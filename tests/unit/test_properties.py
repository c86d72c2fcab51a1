"""Property-based tests (Hypothesis) of the pure rules: subject, image references, audiences,
build contexts and AWS session tags.

Every test is derandomized and has no example database, so CI runs the same examples each
time; the whole file runs in about 13 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, reject, settings
from hypothesis import strategies as st

from idp.aws.errors import TrustPolicyError
from idp.aws.trust_policy import tag_pattern
from idp.config import CONTEXT_CLAIMS, Settings, load_settings
from idp.errors import InvalidAudience, InvalidRequest
from idp.tokens.claims import (
    AUDIENCE_MAX,
    AUDIENCES_MAX,
    build_subject,
    context_claims,
    id_token_claims,
    session_tags,
    validate_audiences,
)
from idp.tokens.claims_file import parse_claims_document
from idp.tokens.context import FIELDS, MAX_TTL, parse_context
from idp.tokens.images import InvalidImageReference, parse_image
from idp.tokens.tags import (
    TAG_KEY_MAX,
    TAG_VALUE_MAX,
    UnsafeTagValue,
    is_valid_tag_key,
    verbatim_tag_value,
)
from idp.tokens.vocabulary import ClaimPolicy
from tests.support import CI_SECRET


def props(max_examples: int) -> settings:
    """Deterministic (derandomized, no database), unhurried, bounded."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)


@pytest.fixture(scope="module")
def settings_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    """As conftest's make_settings, but module-scoped (Hypothesis reruns the test body) and
    cached: settings_for(IDP_SUBJECT_CLAIMS="repo,step")."""
    keys_dir: Path = tmp_path_factory.mktemp("keys")
    cache: dict[tuple[tuple[str, str], ...], Settings] = {}

    def make(**env: str) -> Settings:
        key = tuple(sorted(env.items()))
        if key not in cache:
            cache[key] = load_settings(
                {"IDP_KEYS_DIR": str(keys_dir), "IDP_CI_SECRET": CI_SECRET, **env}
            )
        return cache[key]

    return make


# --------------------------------------------------------------------------------------------
# Image references: an oracle written from distribution/reference (regexp.go, reference.go,
# normalize.go) and go-digest, i.e. what `docker pull` accepts (ParseNormalizedNamed).
# Go's `\w` and `[[:xdigit:]]` are ASCII classes; they are spelled out here.
# --------------------------------------------------------------------------------------------

ALPHANUMERIC = r"[a-z0-9]+"
SEPARATOR = r"(?:[._]|__|[-]+)"
PATH_COMPONENT = ALPHANUMERIC + r"(?:" + SEPARATOR + ALPHANUMERIC + r")*"
DOMAIN_NAME_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
DOMAIN_NAME = DOMAIN_NAME_COMPONENT + r"(?:\." + DOMAIN_NAME_COMPONENT + r")*"
IPV6_ADDRESS = r"\[(?:[a-fA-F0-9:]+)\]"
HOST = r"(?:" + DOMAIN_NAME + r"|" + IPV6_ADDRESS + r")"
DOMAIN_AND_PORT = HOST + r"(?::[0-9]+)?"
TAG = r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}"
DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9A-Fa-f]{32,}"
REMOTE_NAME = PATH_COMPONENT + r"(?:/" + PATH_COMPONENT + r")*"
NAME = r"(?:" + DOMAIN_AND_PORT + r"/)?" + REMOTE_NAME
REFERENCE = r"(" + NAME + r")(?::(" + TAG + r"))?(?:@(" + DIGEST + r"))?"
ANCHORED_NAME = r"(?:(" + DOMAIN_AND_PORT + r")/)?(" + REMOTE_NAME + r")"
IDENTIFIER = r"[a-f0-9]{64}"
REPOSITORY_NAME_TOTAL_LENGTH_MAX = 255
# go-digest: the registered algorithms, each with its anchored lowercase-hex encoding.
DIGEST_ENCODED = {"sha256": r"[a-f0-9]{64}", "sha384": r"[a-f0-9]{96}", "sha512": r"[a-f0-9]{128}"}

_REFERENCE_RE = re.compile(REFERENCE)
_ANCHORED_NAME_RE = re.compile(ANCHORED_NAME)


def _split_docker_domain(name: str) -> tuple[str, str]:
    """normalize.go splitDockerDomain."""
    maybe_domain, slash, maybe_remote = name.partition("/")
    if not slash:
        return "docker.io", "library/" + name
    if (
        maybe_domain == "localhost"
        or maybe_domain == "index.docker.io"
        or any(c in maybe_domain for c in ".:")
        or maybe_domain.lower() != maybe_domain
    ):
        domain, remote = maybe_domain, maybe_remote
        if domain == "index.docker.io":
            domain = "docker.io"
    else:
        domain, remote = "docker.io", name
    if domain == "docker.io" and "/" not in remote:
        remote = "library/" + remote
    return domain, remote


def _go_parse(s: str) -> bool:
    """reference.go Parse, with go-digest's digest.Parse."""
    if s == "":
        return False
    match = _REFERENCE_RE.fullmatch(s)
    if match is None:
        return False
    name_match = _ANCHORED_NAME_RE.fullmatch(match[1])
    assert name_match is not None
    if len(name_match[2]) > REPOSITORY_NAME_TOTAL_LENGTH_MAX:
        return False
    if match[3] is not None:
        algorithm, _, encoded = match[3].partition(":")
        pattern = DIGEST_ENCODED.get(algorithm)
        if pattern is None or not re.fullmatch(pattern, encoded):
            return False
    return True


def docker_accepts(reference: str) -> bool:
    """normalize.go ParseNormalizedNamed: is this a reference Docker would pull?"""
    if re.fullmatch(IDENTIFIER, reference):
        return False
    domain, remainder = _split_docker_domain(reference)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        return False
    return _go_parse(f"{domain}/{remainder}")


def ours_accepts(reference: str) -> bool:
    try:
        parse_image(reference)
    except InvalidImageReference:
        return False
    return True


_lower_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_long_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=90)
_separators = st.sampled_from([".", "_", "__", "-", "--", "---"])


def _path_components(alnum: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda first, rest: first + "".join(sep + part for sep, part in rest),
        alnum,
        st.lists(st.tuples(_separators, alnum), max_size=3),
    )


_domain_components = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
_hosts = st.one_of(
    st.lists(_domain_components, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["localhost", "docker.io", "index.docker.io", "[::1]", "[2001:db8::1]"]),
)
_registries = st.builds(
    lambda host, port: host if port is None else f"{host}:{port}",
    _hosts,
    st.none() | st.integers(0, 99999).map(str),
)
_tags = st.from_regex(TAG, fullmatch=True)
_digests = st.builds(
    lambda algorithm, data: f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}",
    st.sampled_from(sorted(DIGEST_ENCODED)),
    st.binary(max_size=8),
)


@st.composite
def image_parts(draw: st.DrawFn, long: bool = False) -> tuple[str, str, str | None, str | None]:
    """(reference, name, tag, digest) composed by the grammar; `long` reaches the 255 limit."""
    components = _path_components(_long_alnum if long else _lower_alnum)
    registry = draw(st.none() | _registries)
    path = "/".join(draw(st.lists(components, min_size=1, max_size=6 if long else 4)))
    name = path if registry is None else f"{registry}/{path}"
    tag = draw(st.none() | _tags)
    digest = draw(st.none() | _digests)
    reference = name + ("" if tag is None else f":{tag}") + ("" if digest is None else f"@{digest}")
    return reference, name, tag, digest


image_references = image_parts().map(lambda parts: parts[0])


class TestImageReferences:
    @props(300)
    @given(image_parts())
    def test_a_composed_reference_round_trips(
        self, parts: tuple[str, str, str | None, str | None]
    ) -> None:
        """A reference built by the grammar parses into the very name, tag and digest it was
        made of, recombines to the original string, and has image_tag `latest` without a tag."""
        reference, name, tag, digest = parts
        assert docker_accepts(reference)  # the composition follows the grammar
        parsed = parse_image(reference)
        assert (parsed.name, parsed.digest, parsed.tag_given) == (name, digest, tag is not None)
        assert parsed.tag == (tag if tag is not None else "latest")
        assert str(parsed) == reference

    @props(150)
    @given(image_parts(long=True))
    @example(("a" * 247, "a" * 247, None, None))  # library/ + 247 = 255: accepted
    @example(("a" * 248, "a" * 248, None, None))  # library/ + 248 = 256: refused
    @example(("docker.io/" + "a" * 248, "docker.io/" + "a" * 248, None, None))
    @example(("index.docker.io/" + "a" * 247, "index.docker.io/" + "a" * 247, None, None))
    @example(("r.example.com/" + "a" * 255, "r.example.com/" + "a" * 255, None, None))
    @example(("a/" + "b" * 253, "a/" + "b" * 253, None, None))
    @example(("a/" + "b" * 254, "a/" + "b" * 254, None, None))
    def test_the_length_limit_is_dockers(
        self, parts: tuple[str, str, str | None, str | None]
    ) -> None:
        """Long names: accepted exactly when Docker accepts them (the repository path, without
        the registry and with Docker Hub's `library/`, is at most 255), and then round-trip."""
        reference, name, tag, digest = parts
        assert ours_accepts(reference) == docker_accepts(reference), reference
        if docker_accepts(reference):
            parsed = parse_image(reference)
            assert (parsed.name, parsed.digest, str(parsed)) == (name, digest, reference)

    @props(60)
    @given(st.from_regex(REFERENCE, fullmatch=True))
    @example("0123456789abcdef" * 4)  # a bare image id: refused by Docker
    @example("0123456789abcdef" * 4 + ":tag")  # a name that happens to be hex: fine
    @example("app@sha256:" + "0" * 32)  # the grammar's 32 hex digits, not a sha256
    @example("app@sha256:" + "A" * 64)  # uppercase hex: go-digest refuses
    @example("app@md5:" + "0" * 32)  # no such registered algorithm
    @example("app@sha512:" + "0" * 128)
    @example("Foo/bar")  # an uppercase first component is a registry
    @example("[abc]/app")  # looks like IPv6, is no registry (no ':'), and no path either
    @example("[ABC]/app")
    def test_the_parser_accepts_what_docker_accepts_from_the_grammar(self, reference: str) -> None:
        """Strings of distribution/reference's own ReferenceRegexp: our parser accepts exactly
        those Docker accepts, and what it accepts recombines to the original string."""
        assert ours_accepts(reference) == docker_accepts(reference), reference
        if docker_accepts(reference):
            parsed = parse_image(reference)
            match = _REFERENCE_RE.fullmatch(reference)
            assert match is not None
            assert (parsed.name, parsed.digest) == (match[1], match[3])
            assert parsed.tag == (match[2] or "latest")
            assert str(parsed) == reference

    @props(300)
    @given(
        st.one_of(
            st.text(max_size=40),
            st.text("abcAB019._-/:@[]%+ \n", max_size=40),
        )
    )
    @example("app\n")
    @example("Golang:1.22")
    @example("golang:")
    def test_arbitrary_text_is_judged_as_docker_judges_it(self, text: str) -> None:
        """For any text, our parser and Docker's reference rules agree on valid or not."""
        assert ours_accepts(text) == docker_accepts(text)

    @props(250)
    @given(image_references, st.data())
    def test_near_misses_of_valid_references_are_judged_as_docker_judges_them(
        self, reference: str, data: st.DataObject
    ) -> None:
        """One-character mutations of a valid reference (insert, delete, replace, change
        case): our parser and Docker agree on each, and an accepted one still round-trips."""
        position = data.draw(st.integers(0, len(reference)))
        char = data.draw(st.sampled_from(list("aZ0:/@._-+%[] \né") + ["__", "--", "::", "//"]))
        mutate = data.draw(st.sampled_from(["insert", "delete", "replace", "swapcase"]))
        if mutate == "insert":
            mutated = reference[:position] + char + reference[position:]
        elif mutate == "delete":
            mutated = reference[:position] + reference[position + 1 :]
        elif mutate == "replace":
            mutated = reference[:position] + char + reference[position + 1 :]
        else:
            mutated = reference[:position] + reference[position:].swapcase()
        assert ours_accepts(mutated) == docker_accepts(mutated), mutated
        if ours_accepts(mutated):
            assert str(parse_image(mutated)) == mutated


# --------------------------------------------------------------------------------------------
# The subject
# --------------------------------------------------------------------------------------------

_SUBJECT_PIECES = [
    ":",
    "%",
    "%3A",
    "%25",
    "%253A",
    "%3",
    "%2",
    "3A",
    "25",
    ":event:push",
    ":ref:",
    "event",
    "push",
    "refs/heads/main",
    "a",
    "/",
    " ",
    "é",
]
_tricky_text = st.one_of(
    st.lists(st.sampled_from(_SUBJECT_PIECES), max_size=6).map("".join),
    st.text(st.sampled_from(list(":%3A25a")), max_size=12),
    st.text(max_size=12),
)
_subject_keys = st.lists(st.sampled_from(CONTEXT_CLAIMS[1:]), unique=True, max_size=5).map(
    lambda rest: ("repo", *rest)
)


def read_subject(subject: str, keys: Sequence[str]) -> list[str]:
    """Read `sub` back GitHub's way: split on ':' into key/value pairs, then unescape each
    value (`%3A` -> ':', `%25` -> '%'); fail if it has other keys or a stray '%'."""
    parts = subject.split(":")
    assert len(parts) == 2 * len(keys), f"{subject!r} does not have exactly the keys {keys}"
    assert parts[0::2] == list(keys)
    values = []
    for escaped in parts[1::2]:
        assert re.fullmatch(r"(?:[^%]|%25|%3A)*", escaped), f"{escaped!r} has a bare '%'"
        values.append(re.sub(r"%(25|3A)", lambda m: "%" if m[1] == "25" else ":", escaped))
    return values


class TestSubject:
    @props(300)
    @given(_subject_keys, st.data())
    def test_the_subject_reads_back_to_exactly_the_claim_values(
        self, keys: tuple[str, ...], data: st.DataObject
    ) -> None:
        """For any claim values (':' and '%' included), `sub` has exactly the configured keys
        in order, and unescaping gives back exactly the values: no value adds a segment."""
        claims = {key: data.draw(_tricky_text, label=key) for key in keys}
        subject = build_subject(claims, keys)
        assert read_subject(subject, keys) == [claims[key] for key in keys]

    @props(300)
    @given(
        st.lists(st.sampled_from(CONTEXT_CLAIMS[1:]), unique=True, min_size=1, max_size=2),
        st.data(),
    )
    def test_different_values_never_give_the_same_subject(
        self, rest: list[str], data: st.DataObject
    ) -> None:
        """Injectivity: two claim sets give the same `sub` only if every subject value is
        equal. Values come from a small pool of colliding shapes (`a:b` against `a%3Ab`,
        `x:event:push` against `x` + `push`) so that near misses are common."""
        keys = ("repo", *rest)
        pool = st.sampled_from(
            ["", ":", "%", "%3A", "%25", "%253A", "a:b", "a%3Ab", "x", "push", ":event:push"]
            + [f"x:{rest[0]}:push", f"x%3A{rest[0]}%3Apush"]
        )
        one = {key: data.draw(pool) for key in keys}
        two = {key: data.draw(pool) for key in keys}
        same_values = [one[k] for k in keys] == [two[k] for k in keys]
        assert same_values == (build_subject(one, keys) == build_subject(two, keys))

    @props(100)
    @given(st.data())
    def test_contexts_that_parse_give_subjects_that_read_back(
        self, settings_for: Callable[..., Settings], data: st.DataObject
    ) -> None:
        """Through the real path (parse_context, IDP_SUBJECT_CLAIMS, id_token_claims): `sub`
        reads back to the context's claim values, and a second context differing in a subject
        value (':' <-> '%3A', a forged ':key:value' suffix...) never gets the same `sub`."""
        keys = data.draw(_subject_keys, label="IDP_SUBJECT_CLAIMS")
        cfg = settings_for(IDP_SUBJECT_CLAIMS=",".join(keys))
        first = data.draw(valid_contexts(), label="first")
        second = data.draw(neighbour_of(first, keys), label="second")
        subjects, values = [], []
        for body in (first, second):
            try:
                ctx = parse_context(body)
            except InvalidRequest:
                reject()
            claims = context_claims(ctx)
            subject = id_token_claims(ctx, ["sts.amazonaws.com"], cfg, 0)["sub"]
            assert read_subject(subject, cfg.subject_claims) == [claims[k] for k in keys]
            subjects.append(subject)
            values.append([claims[k] for k in keys])
        assert (subjects[0] == subjects[1]) == (values[0] == values[1])

    @props(100)
    @given(
        st.sampled_from(["ref", "branch"]),
        st.tuples(_tricky_text, _tricky_text).map(lambda p: f"{p[0]}:{p[1]}"),
    )
    @example("ref", "refs/heads/main:event:push")
    def test_a_ref_or_branch_with_a_colon_never_becomes_a_context(
        self, field: str, value: str
    ) -> None:
        """git forbids ':' in refs: a ref or branch holding one (`...:event:push`) is refused
        before it could reach a subject at all."""
        with pytest.raises(InvalidRequest, match=field):
            parse_context({**BASE_CONTEXT, field: value})


# A claims file's pieces: declared names, values that collide once escaped or unescaped (or
# look like subject keys), globs that do and do not match them.
_DECLARED = ["team", "stage", "zone"]
_DECLARED_VALUES = ["a", "b", "%", "%3A", "%25", "a%3Ab", "team", "ref", "event", "x%253A"]
_EVENT_VALUES = ["push", ":", "a:b", "a%3Ab", "push:team:a", "%3A", "x:ref:y"]
_GLOBS = ["*", "a*", "%*", "b", "?"]


@st.composite
def claims_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A claims file as YAML would decode it: declared text claims, some built-ins optional,
    an identity, and ordered subject rules that may or may not match."""
    declared = draw(st.lists(st.sampled_from(_DECLARED), min_size=1, max_size=3, unique=True))
    required = {name: draw(st.booleans(), label=f"{name} required") for name in declared}
    owners = [name for name in declared if required[name]]
    identity = [owners[0]] if owners and draw(st.booleans(), label="own identity") else ["repo"]
    optional = draw(
        st.lists(st.sampled_from(["ref", "event", "step", "sha"]), max_size=3, unique=True)
    )
    if identity != ["repo"] and draw(st.booleans(), label="repo optional"):
        optional.append("repo")
    usable = [*declared, "repo", "ref", "event", "step", "environment"]
    rules = []
    for _ in range(draw(st.integers(0, 3), label="rules")):
        rest = draw(st.lists(st.sampled_from(usable), max_size=4, unique=True))
        rule: dict[str, Any] = {"claims": identity + [c for c in rest if c not in identity]}
        globs = draw(st.dictionaries(st.sampled_from(usable), st.sampled_from(_GLOBS), max_size=2))
        if globs:
            rule["match"] = globs
        rules.append(rule)
    if identity != ["repo"]:
        rules.append({"claims": identity})  # else IDP_SUBJECT_CLAIMS must start with it
    return {
        "identity": identity,
        "optional": optional,
        "claims": {name: {"required": required[name]} for name in declared},
        "subjects": rules,
    }


@st.composite
def contexts_for(draw: st.DrawFn, policy: ClaimPolicy) -> dict[str, Any]:
    """A context for `policy`: declared and optional claims present or not, values from the
    colliding pools."""
    body = {k: v for k, v in BASE_CONTEXT.items() if k not in ("event", "step")}
    body["event"] = draw(st.sampled_from(_EVENT_VALUES), label="event")
    body["step"] = draw(st.sampled_from(_EVENT_VALUES), label="step")
    body["environment"] = draw(st.sampled_from(["prod", "a:b"]), label="environment")
    for name, spec in policy.fields.items():
        if name in policy.declared:
            body[name] = draw(st.sampled_from(_DECLARED_VALUES), label=name)
        if not spec.required and draw(st.booleans(), label=f"drop {name}"):
            body.pop(name, None)
    return body


def read_pairs(subject: str) -> list[tuple[str, str]]:
    """Read any `sub` back into its (key, value) pairs, unescaping each value."""
    parts = subject.split(":")
    assert len(parts) % 2 == 0, subject
    for escaped in parts[1::2]:
        assert re.fullmatch(r"(?:[^%]|%25|%3A)*", escaped), f"{escaped!r} has a bare '%'"
    values = [re.sub(r"%(25|3A)", lambda m: "%" if m[1] == "25" else ":", v) for v in parts[1::2]]
    return list(zip(parts[0::2], values, strict=True))


class TestSubjectRules:
    @props(200)
    @given(claims_documents(), st.data())
    def test_sub_stays_injective_over_generated_claim_files(
        self, document: dict[str, Any], data: st.DataObject
    ) -> None:
        """For any claims file and any two contexts: `sub` starts with the identity claims,
        reads back to exactly the (key, value) pairs of the claims it names (absent keys left
        out, escaping intact), and two contexts share a `sub` only if those pairs are equal."""
        policy = parse_claims_document(json.loads(json.dumps(document)))
        cfg = replace(
            load_settings({}), claim_policy=policy, subject_claims=(*policy.identity, "ref")
        )
        subjects, pairs = [], []
        for label in ("first", "second"):
            body = data.draw(contexts_for(policy), label=label)
            ctx = parse_context(body, policy)
            claims = context_claims(ctx)
            keys = policy.subject_keys(claims, cfg.subject_claims)
            subject = id_token_claims(ctx, ["sts.amazonaws.com"], cfg, 0)["sub"]
            expected = [(key, claims[key]) for key in keys]
            assert read_pairs(subject) == expected
            assert [key for key, _ in expected[: len(policy.identity)]] == list(policy.identity)
            subjects.append(subject)
            pairs.append(expected)
        assert (subjects[0] == subjects[1]) == (pairs[0] == pairs[1])


# --------------------------------------------------------------------------------------------
# Build contexts
# --------------------------------------------------------------------------------------------

BASE_CONTEXT: dict[str, Any] = {
    "repo": "octo-org/octo-repo",
    "ref": "refs/heads/main",
    "sha": "a" * 40,
    "event": "push",
    "branch": "main",
    "build_id": 1234,
    "build_number": 42,
    "actor": "octocat",
    "actor_scm_id": 583231,
    "pull_fork": False,
    "step": "deploy",
    "image": "registry:5000/team/app:1.2",
    "commands": False,
    "request": "yes",
}

# Text without control characters (Cc holds C0, DEL and C1), line/paragraph separators or
# surrogates, stripped: mostly values parse_context takes.
_surrogates = st.integers(0xD800, 0xDFFF).map(chr)  # lone UTF-16 surrogates
_clean_chars = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"))
_context_text = st.one_of(
    st.lists(st.sampled_from(_SUBJECT_PIECES), max_size=6).map("".join),
    st.text(_clean_chars, max_size=12),
).map(str.strip)
_ids = st.integers(0, 10**20 - 1) | st.from_regex(r"0|[1-9][0-9]{0,19}", fullmatch=True)


def _text_for(field: str) -> st.SearchStrategy[str]:
    text = _context_text
    if FIELDS[field].no_colon:
        text = text.map(lambda value: value.replace(":", "%3A"))
    return text if FIELDS[field].allow_empty else text.filter(bool)


@st.composite
def valid_contexts(draw: st.DrawFn) -> dict[str, Any]:
    """Build context bodies that almost always parse, with ':' and '%' wherever allowed."""
    body: dict[str, Any] = {}
    for name, spec in FIELDS.items():
        if name == "repo":
            body[name] = draw(
                st.from_regex(r"[A-Za-z0-9_.-]{1,12}/[A-Za-z0-9_.-]{1,12}", fullmatch=True)
            )
        elif name == "image":
            body[name] = draw(image_references)
        elif spec.kind == "bool":
            body[name] = draw(st.booleans())
        elif spec.kind == "id":
            body[name] = draw(_ids | st.just("") if spec.allow_empty else _ids)
        else:
            body[name] = draw(_text_for(name))
    if draw(st.booleans()):
        body["ttl"] = draw(st.integers(1, MAX_TTL))
    return body


# Nudges into the shapes that could collide in a subject; the first ones keep a value free of
# ':' (ref and branch may not hold one).
_NEIGHBOURS: list[Callable[[str, str], str]] = [
    lambda value, key: value,
    lambda value, key: value.replace("%", "%25"),
    lambda value, key: value.replace("%25", "%"),
    lambda value, key: f"{value}%3A{key}%3Apush",
    lambda value, key: value[:-1],
    lambda value, key: value.replace(":", "%3A"),
    lambda value, key: value.replace("%3A", ":"),
    lambda value, key: f"{value}:{key}:push",
]


@st.composite
def neighbour_of(draw: st.DrawFn, body: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """`body` with some subject values nudged into the shapes that could collide."""
    other = dict(body)
    for key in keys:
        if key in FIELDS and FIELDS[key].kind == "text" and key not in ("repo", "image"):
            nudges = _NEIGHBOURS[:5] if FIELDS[key].no_colon else _NEIGHBOURS
            nudge = draw(st.sampled_from(nudges))
            other[key] = nudge(body[key], draw(st.sampled_from(keys)))
    return other


# Integers past Python's 4300-digit int->str limit (Hypothesis cannot repr them as constants).
_huge_ints = st.sampled_from([1, -1]).map(lambda sign: sign * 10**5000)
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**64, -1]),
    _huge_ints,
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb", "\u2028", "yes", "true", "1"]),
)
json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)


# Values of the right JSON type but the wrong shape for some field, and of wrong types.
_wrong_values: st.SearchStrategy[Any] = (
    st.sampled_from(
        ["", " x", "x ", "a\nb", "a\ud800b", "a:b", "x" * 513, "Not An Image", "12a", "007"]
        + [0, -1, 10**20, True, 1.5, [], {}, None]
    )
    | _huge_ints
    | json_values
)


@st.composite
def context_shaped(draw: st.DrawFn) -> Any:
    """A dict with the real field names, some values wrong-typed, missing or unknown."""
    body = draw(valid_contexts())
    for name in [*FIELDS, "ttl"]:
        action = draw(st.sampled_from(["keep", "keep", "wrong", "drop"]))
        if action == "wrong":
            body[name] = draw(_wrong_values)
        elif action == "drop" and draw(st.integers(0, 4)) == 0:
            body.pop(name, None)
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.text(max_size=6))] = draw(json_values)
    return body


def _is_clean_text(value: str) -> bool:
    return not any(
        unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or "\ud800" <= c <= "\udfff"
        for c in value
    )


class TestBuildContext:
    @props(150)
    @given(st.one_of(json_values, context_shaped(), valid_contexts()))
    def test_any_json_is_a_valid_context_or_invalid_request(self, body: Any) -> None:
        """parse_context on arbitrary JSON-like input returns a context meeting every field
        rule, or raises InvalidRequest (400) with a describable message; nothing else. An
        accepted context re-parses from its JSON form (as request tokens carry it) unchanged."""
        try:
            ctx = parse_context(body)
        except InvalidRequest as exc:
            assert exc.status == 400 and exc.description
            exc.description.encode("utf-8")  # goes out as JSON: must be real text
            return
        for name, spec in FIELDS.items():
            value = getattr(ctx, name)
            if value is None:
                # An optional field (environment) the context left out: no claim at all.
                assert not spec.required and name not in body, name
                continue
            if spec.kind == "bool":
                assert isinstance(value, bool)
            elif spec.kind == "id":
                # Canonical: one build is one string (no "05003" beside "5003").
                assert re.fullmatch(r"0|[1-9][0-9]{0,19}", value) or (
                    spec.allow_empty and value == ""
                )
            else:
                assert isinstance(value, str) and (value or spec.allow_empty)
                assert len(value) <= spec.max_length and value == value.strip()
                assert _is_clean_text(value), f"{name}={value!r}"
                assert not (spec.no_colon and ":" in value)
        assert re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", ctx.repo)
        assert ctx.org not in (".", "..") and ctx.name not in (".", "..")
        assert docker_accepts(ctx.image)
        assert ctx.ttl is None or (type(ctx.ttl) is int and 1 <= ctx.ttl <= MAX_TTL)
        json.dumps(ctx.to_json(), ensure_ascii=False).encode("utf-8")
        assert parse_context(json.loads(json.dumps(ctx.to_json()))) == ctx

    @props(100)
    @given(st.sampled_from([n for n, s in FIELDS.items() if s.kind == "text"]), st.data())
    def test_a_lone_surrogate_is_refused_not_a_server_error(
        self, field: str, data: st.DataObject
    ) -> None:
        """`"\\ud800"` is valid JSON that Python decodes to a lone surrogate, which cannot be
        encoded to UTF-8 (signing the request token then failed with a 500): it is a 400."""
        surrogate = data.draw(_surrogates)
        value = data.draw(st.sampled_from(["{}", "x{}y", "refs/heads/{}"])).format(surrogate)
        with pytest.raises(InvalidRequest, match=field):
            parse_context({**BASE_CONTEXT, field: value})


# --------------------------------------------------------------------------------------------
# Audiences
# --------------------------------------------------------------------------------------------

_AUDIENCE_PIECES = [
    "a",
    "b",
    "sts.amazonaws.com",
    ",",
    "%2C",
    "%2c",
    " ",
    "\t",
    "\n",
    "",
    "é",
    "\x7f",
    "~",
    "a,b",
    "%",
    "\u00a0",
]
_audience_text = st.one_of(
    st.lists(st.sampled_from(_AUDIENCE_PIECES), max_size=4).map("".join),
    st.text(max_size=8),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=250, max_size=260),
)
_audience_lists = st.lists(_audience_text, max_size=12)
_allow_lists = st.none() | st.lists(
    st.sampled_from(["a", "b", "sts.amazonaws.com", "%2C", "a b", "~"]), min_size=1, max_size=3
)


def audience_is_well_formed(audience: object) -> bool:
    """README: a printable ASCII string of at most 256 characters without ','; the issuer
    also refuses surrounding spaces."""
    return (
        isinstance(audience, str)
        and 1 <= len(audience) <= AUDIENCE_MAX
        and all(0x20 <= ord(c) <= 0x7E for c in audience)
        and audience.strip(" ") == audience
        and "," not in audience
    )


class TestAudiences:
    @props(400)
    @given(
        st.one_of(_audience_lists, _audience_lists.map(tuple), json_values, _audience_text),
        _allow_lists,
    )
    @example(["a,b"], None)
    @example(["a%2Cb"], None)
    @example("ab", None)  # a bare string is no list of two audiences
    @example(["", "a"], None)
    @example([" a"], None)
    @example(["a"] * 11, None)
    @example(["sts.amazonaws.com", "evil"], ["sts.amazonaws.com"])
    def test_audiences_are_exactly_the_well_formed_ones_asked_for(
        self,
        settings_for: Callable[..., Settings],
        raw: Any,
        allowed: list[str] | None,
    ) -> None:
        """validate_audiences accepts a request exactly when it is a list of 1 to 10 audiences,
        each well formed and (with IDP_AUDIENCES) allowed; it then returns the requested ones
        in order without repeats, never more or others ('a,b' or '%2C' never split);
        otherwise it raises InvalidAudience, and nothing else."""
        env = {} if allowed is None else {"IDP_AUDIENCES": ",".join(allowed)}
        cfg = settings_for(**env)
        acceptable = (
            isinstance(raw, list | tuple)
            and 1 <= len(raw) <= AUDIENCES_MAX
            and all(audience_is_well_formed(a) for a in raw)
            and (cfg.audiences is None or all(a in cfg.audiences for a in raw))
        )
        try:
            result = validate_audiences(raw, cfg)
        except InvalidAudience as exc:
            assert not acceptable, f"{raw!r} was refused: {exc.description}"
            assert exc.status == 400
            return
        assert acceptable, f"{raw!r} was accepted as {result!r}"
        assert result == list(dict.fromkeys(raw))
        assert all(audience_is_well_formed(a) for a in result)


# --------------------------------------------------------------------------------------------
# AWS session tags
# --------------------------------------------------------------------------------------------


def aws_tag_char(c: str) -> bool:
    """AWS's tag character set `[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]`, from the Unicode database."""
    return unicodedata.category(c)[0] in "LZN" or c in "_.:/=+-@"


def aws_accepts_tag_value(value: str) -> bool:
    return len(value) <= TAG_VALUE_MAX and all(aws_tag_char(c) for c in value)


_tag_chars = st.characters(categories=("L", "Z", "N")) | st.sampled_from(list("_.:/=+-@"))
# Everything AWS refuses in a tag: punctuation and symbols but `_.:/=+-@`, marks, controls.
_refused_tag_chars = st.characters(exclude_categories=("L", "Z", "N", "Cs")).filter(
    lambda c: c not in "_.:/=+-@"
) | st.sampled_from(list("!#?&$%*()[]{}<>|\\\"'`,;~^"))
_tag_values_with_refused_characters = st.tuples(
    st.text(_tag_chars, max_size=20), _refused_tag_chars, st.text(_tag_chars, max_size=20)
).map("".join)


@st.composite
def _colliding_tag_values(draw: st.DrawFn) -> tuple[str, str]:
    """Two values shaped to collide once folded: one text with a refused character (or '_',
    or nothing) at the same place in each, or a common prefix past 256 characters."""
    head = draw(st.text(_tag_chars, max_size=30))
    tail = draw(st.text(_tag_chars, max_size=30))
    if draw(st.integers(0, 4)) == 0:
        head = head + "x" * (TAG_VALUE_MAX - len(head))
    middle = _refused_tag_chars | st.just("_") | st.just("")
    return head + draw(middle) + tail, head + draw(middle) + tail


_any_text = st.one_of(
    st.text(max_size=300),
    st.text(st.characters() | _surrogates, max_size=40),
    st.text(st.characters(max_codepoint=0x7F), min_size=250, max_size=300),
)


class TestSessionTags:
    @props(400)
    @given(_any_text | st.text(_tag_chars, max_size=300) | _tag_values_with_refused_characters)
    @example("a&b" * 100)
    @example("\ud800")
    @example("x" * TAG_VALUE_MAX)
    @example("x" * (TAG_VALUE_MAX + 1))
    def test_a_value_is_its_own_tag_exactly_when_aws_accepts_it(self, value: str) -> None:
        """verbatim_tag_value returns the value itself when AWS accepts it (at most 256
        characters, each a letter, digit, space separator or one of `_.:/=+-@`), and raises
        UnsafeTagValue otherwise: it never folds or cuts."""
        if aws_accepts_tag_value(value):
            assert verbatim_tag_value(value) == value
        else:
            with pytest.raises(UnsafeTagValue):
                verbatim_tag_value(value)

    @props(400)
    @given(_colliding_tag_values(), st.sampled_from(["ref", "branch", "step", "image_tag"]))
    @example(("refs/heads/release!1", "refs/heads/release#1"), "ref")
    @example(("refs/heads/release?1", "refs/heads/release_1"), "ref")
    @example(("a" * 256 + "b", "a" * 256 + "c"), "ref")
    def test_no_two_claim_values_give_one_session_tag(
        self, values: tuple[str, str], claim: str
    ) -> None:
        """Over AWS's refused characters (and past 256 characters): two different claim
        values never produce the same tag value, and every value that gets a tag appears in it
        verbatim; a value that cannot is refused with a 400 naming the claim. The trust-policy
        builder writes exactly the same: a value verbatim, or a refusal."""
        tags = []
        for value in values:
            claims = {claim: value}
            try:
                tag = session_tags(claims, [claim])["principal_tags"][claim]
            except InvalidRequest as exc:
                assert exc.status == 400 and repr(claim) in exc.description
                assert not aws_accepts_tag_value(value)
                if "*" not in value and "?" not in value:  # in a pattern those are wildcards
                    with pytest.raises(TrustPolicyError):
                        tag_pattern(value, claim)
                continue
            assert tag == [value] and aws_accepts_tag_value(value)
            assert tag_pattern(value, claim) == value
            tags.append(tag[0])
        assert len(tags) == len(set(tags)) or values[0] == values[1]

    @props(300)
    @given(st.text(_tag_chars, max_size=TAG_VALUE_MAX))
    @example("a b:c/d=e+f-g@h.i_j")
    @example("\u3000\u2028\u00b2\u0661")  # ideographic space, line separator, ², Arabic 1
    def test_a_value_aws_already_accepts_is_unchanged(self, value: str) -> None:
        """A value already within AWS's rules passes through untouched."""
        assert verbatim_tag_value(value) == value

    @props(300)
    @given(
        _any_text
        | st.text(_tag_chars, max_size=TAG_KEY_MAX + 2)
        | st.tuples(
            st.sampled_from(["aws:", "AWS:", "Aws:", "aws", "awſ:"]), st.text(_tag_chars)
        ).map("".join)
    )
    @example("")
    @example("x" * TAG_KEY_MAX)
    @example("x" * (TAG_KEY_MAX + 1))
    def test_tag_keys_are_judged_by_aws_rules(self, key: str) -> None:
        """is_valid_tag_key: 1 to 128 characters of AWS's set, not starting with the reserved
        `aws:` prefix in any ASCII case."""
        expected = (
            1 <= len(key) <= TAG_KEY_MAX
            and all(aws_tag_char(c) for c in key)
            and re.match("aws:", key, re.IGNORECASE | re.ASCII) is None
        )
        assert is_valid_tag_key(key) == expected
