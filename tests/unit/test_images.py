"""Image references by the Docker reference grammar (distribution/reference)."""

from __future__ import annotations

import pytest

from idp.tokens.images import InvalidImageReference, parse_image

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("reference", "name", "tag", "digest"),
    [
        ("golang", "golang", "latest", None),
        ("golang:1.22", "golang", "1.22", None),
        ("library/alpine:3.19", "library/alpine", "3.19", None),
        ("docker.io/library/alpine:3.19", "docker.io/library/alpine", "3.19", None),
        ("registry:5000/img:tag", "registry:5000/img", "tag", None),  # Vela splits this wrongly
        ("registry:5000/img", "registry:5000/img", "latest", None),
        (f"registry:5000/team/app:1.2@{DIGEST}", "registry:5000/team/app", "1.2", DIGEST),
        (f"ghcr.io/octo-org/app@{DIGEST}", "ghcr.io/octo-org/app", "latest", DIGEST),
        ("localhost/app:dev", "localhost/app", "dev", None),
        ("localhost:5000/a/b/c:v1.0.0-rc.1", "localhost:5000/a/b/c", "v1.0.0-rc.1", None),
        ("[::1]:5000/app:v1", "[::1]:5000/app", "v1", None),
        ("target/vela-git:v0.8.0", "target/vela-git", "v0.8.0", None),
        ("cargill/vela-aws-credentials:latest", "cargill/vela-aws-credentials", "latest", None),
        (
            "my.registry.example.com/deep/nested/path/app:1",
            "my.registry.example.com/deep/nested/path/app",
            "1",
            None,
        ),
        ("a__b/c-d.e:T_A.G", "a__b/c-d.e", "T_A.G", None),
        (
            "123.dkr.ecr.us-east-1.amazonaws.com/app:sha-abc",
            "123.dkr.ecr.us-east-1.amazonaws.com/app",
            "sha-abc",
            None,
        ),
    ],
)
def test_valid_references(reference: str, name: str, tag: str, digest: str | None) -> None:
    parsed = parse_image(reference)
    assert (parsed.name, parsed.tag, parsed.digest) == (name, tag, digest)
    assert str(parsed) == reference


@pytest.mark.parametrize(
    "reference",
    [
        "",
        "Golang:1.22",  # uppercase path without a registry
        "golang:",
        "golang:-tag",
        "a//b",
        "/app",
        "app/",
        "app@sha256:short",
        "registry:port/app",
        "app:" + "t" * 129,
        "app name",
        "app\n",
        "a" * 256,
    ],
)
def test_invalid_references(reference: str) -> None:
    with pytest.raises(InvalidImageReference):
        parse_image(reference)
