"""Attacks on the issuer, one row each: what the attacker sends and what the issuer answers.

Every row runs against `idp serve` (2 gunicorn workers) on a private Redis, as deployed. For
every attack the answer must be the named 4xx in the JSON error shape, with the security
headers, `Cache-Control: no-store`, `WWW-Authenticate` on a 401, and never a token. The tokens
that must be refused are crafted here by hand or with PyJWT, never with the issuer's own code.
"""

# The attack table keeps one attack per line, however long: it is read as a table.
# ruff: noqa: E501

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from requests.structures import CaseInsensitiveDict

from idp.views.headers import SECURITY_HEADERS
from tests.support import CI_SECRET, IssuerProcess
from tests.unit.test_claims import CONTEXT

CI = {"Authorization": f"Bearer {CI_SECRET}"}
KEK = "security-table-key-encryption-key-0123456789"
TOKEN_FIELDS = {"token", "value", "env"}


class Target:
    """The issuer under attack, and what an attacker can get from it legitimately."""

    def __init__(self, proc: IssuerProcess) -> None:
        self.proc = proc
        self.issuer = proc.issuer
        self.base = proc.base
        self._build = 900_000

    def open(self, **overrides: Any) -> dict[str, Any]:
        """A genuine request token for a fresh build (so rows never share state)."""
        self._build += 1
        body = {**CONTEXT, "build_id": self._build, **overrides}
        response = requests.post(f"{self.issuer}/request-tokens", json=body, headers=CI, timeout=10)
        assert response.status_code == 200, response.text
        opened: dict[str, Any] = response.json()
        return opened

    def token(self, **overrides: Any) -> str:
        return str(self.open(**overrides)["token"])

    def exchange(self, token: str, query: str = "audience=sts.amazonaws.com") -> requests.Response:
        return requests.get(
            f"{self.issuer}/id-token?api-version=2.0&{query}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    def id_token(self) -> str:
        response = self.exchange(self.token())
        assert response.status_code == 200, response.text
        return str(response.json()["value"])

    def jwks(self) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = requests.get(
            f"{self.issuer}/.well-known/jwks", timeout=10
        ).json()["keys"]
        return keys


@pytest.fixture(scope="module")
def target(module_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    env = {
        "IDP_REDIS_URL": module_redis_url,
        "IDP_KEY_ENCRYPTION_KEY": KEK,
        "IDP_KEYS_DIR": str(tmp_path_factory.mktemp("unused")),
    }
    with IssuerProcess(env, workers=2) as proc:
        yield Target(proc)


# --- crafting tokens ---------------------------------------------------------------------


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(header + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
        signature,
    )


def alg_none(t: Target) -> str:
    header, payload, _ = parts(t.token())
    return f"{b64({**header, 'alg': 'none'})}.{b64(payload)}."


def hs256_over_public_key(t: Target) -> str:
    # The classic key-confusion attack: HMAC keyed with the published public key's PEM,
    # signed by hand (JOSE libraries rightly refuse to make such a token).
    _, payload, _ = parts(t.token())
    pem = jwt.PyJWK(t.jwks()[0]).key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'idp-request+jwt'})}.{b64(payload)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def attacker_key_with_published_kid(t: Target) -> str:
    # RS256 under the attacker's own key, claiming the kid of the issuer's published key.
    _, payload, _ = parts(t.token())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = t.jwks()[0]["kid"]
    return jwt.encode(
        payload, key, algorithm="RS256", headers={"kid": kid, "typ": "idp-request+jwt"}
    )


def unknown_kid(t: Target) -> str:
    header, payload, signature = parts(t.token())
    return f"{b64({**header, 'kid': 'no-such-key'})}.{b64(payload)}.{signature}"


def foreign_issuer_token(t: Target) -> str:
    # A well-formed request token of another issuer (its own secret), same claims otherwise.
    _, payload, _ = parts(t.token())
    return jwt.encode(
        payload,
        "another-issuers-secret-0123456789",
        algorithm="HS256",
        headers={"typ": "idp-request+jwt"},
    )


def tampered_repo(t: Target) -> str:
    header, payload, signature = parts(t.token())
    payload["ctx"] = {**payload["ctx"], "repo": "evil-org/evil-repo"}
    return f"{b64(header)}.{b64(payload)}.{signature}"


def tampered_exp(t: Target) -> str:
    header, payload, signature = parts(t.token())
    payload["exp"] = payload["exp"] + 10**6
    return f"{b64(header)}.{b64(payload)}.{signature}"


def expired(t: Target) -> str:
    token = t.token(ttl=1)
    time.sleep(2.1)  # genuinely expired: signed by the issuer, past its exp (no leeway)
    return token


def closed_build(t: Target) -> str:
    token = t.token()
    assert t.exchange(token).status_code == 200
    build_id = parts(token)[1]["ctx"]["build_id"]
    closed = requests.delete(f"{t.issuer}/builds/{build_id}", headers=CI, timeout=10)
    assert closed.status_code == 200
    return token  # replayed after its build closed


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    name: str
    send: Callable[[Target], requests.Response]
    status: int
    error: str


def exchange_with(make: Callable[[Target], str], query: str = "audience=sts.amazonaws.com"):  # type: ignore[no-untyped-def]
    return lambda t: t.exchange(make(t), query)


def vela(path: str) -> Callable[[Target], requests.Response]:
    return lambda t: requests.get(
        f"{t.base}{path}?audience=sts.amazonaws.com",
        headers={"Authorization": f"Bearer {t.token()}"},
        timeout=10,
    )


def open_with(
    headers: dict[str, str],
    body: Any = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> Callable[[Target], requests.Response]:
    def send(t: Target) -> requests.Response:
        data = raw if raw is not None else json.dumps(CONTEXT if body is None else body).encode()
        return requests.post(
            f"{t.issuer}/request-tokens",
            data=data,
            headers={**headers, "Content-Type": content_type},
            timeout=10,
        )

    return send


def audience(query: str) -> Callable[[Target], requests.Response]:
    return lambda t: t.exchange(t.token(), query)


def raw_audience(query: str) -> Callable[[Target], requests.Response]:
    """As `audience`, but the query goes out byte for byte: requests would re-quote a '%'
    that starts no escape into '%25', turning the attack into a legitimate request."""

    def send(t: Target) -> requests.Response:
        path = f"{urlsplit(t.issuer).path}/id-token?{query}"
        conn = http.client.HTTPConnection("127.0.0.1", t.proc.port, timeout=10)
        conn.request("GET", path, headers={"Authorization": f"Bearer {t.token()}"})
        answer = conn.getresponse()
        response = requests.Response()
        response.status_code = answer.status
        response.headers = CaseInsensitiveDict(answer.getheaders())
        response._content = answer.read()
        response.encoding = "utf-8"
        conn.close()
        return response

    return send


ATTACKS = [
    # Forged and stolen request tokens.
    Attack("alg: none", exchange_with(alg_none), 401, "invalid_token"),
    Attack("HS256 with the public key as secret", exchange_with(hs256_over_public_key), 401, "invalid_token"),
    Attack("RS256 by an attacker's key under a published kid", exchange_with(attacker_key_with_published_kid), 401, "invalid_token"),
    Attack("kid pointing at an unknown key", exchange_with(unknown_kid), 401, "invalid_token"),
    Attack("request token of another issuer", exchange_with(foreign_issuer_token), 401, "invalid_token"),
    Attack("ID token used as a request token", exchange_with(lambda t: t.id_token()), 401, "invalid_token"),
    Attack("tampered build context", exchange_with(tampered_repo), 401, "invalid_token"),
    Attack("tampered expiry", exchange_with(tampered_exp), 401, "invalid_token"),
    Attack("expired request token", exchange_with(expired), 401, "invalid_token"),
    Attack("replay after the build closed", exchange_with(closed_build), 401, "invalid_token"),
    Attack("another repo's Vela route", vela("/api/v1/repos/octo-org/other/builds/42/id_token"), 403, "access_denied"),
    Attack("another build's Vela route", vela("/api/v1/repos/octo-org/octo-repo/builds/43/id_token"), 403, "access_denied"),
    Attack("no bearer at all", lambda t: requests.get(f"{t.issuer}/id-token?audience=a", timeout=10), 401, "invalid_token"),
    Attack("garbage bearer", exchange_with(lambda t: "not-a-token"), 401, "invalid_token"),
    Attack("non-UTF-8 bearer", exchange_with(lambda t: "\xff\xfe.\xff.\xff"), 401, "invalid_token"),
    # The CI server's API.
    Attack("no CI secret", open_with({}), 401, "invalid_token"),
    Attack("wrong CI secret", open_with({"Authorization": "Bearer wrong"}), 401, "invalid_token"),
    Attack("CI secret as Basic", open_with({"Authorization": f"Basic {CI_SECRET}"}), 401, "invalid_token"),
    Attack("CI secret with a suffix", open_with({"Authorization": f"Bearer {CI_SECRET}x"}), 401, "invalid_token"),
    Attack("a step's request token on the CI API", lambda t: open_with({"Authorization": f"Bearer {t.token()}"})(t), 401, "invalid_token"),
    Attack("closing a build with a request token", lambda t: requests.delete(f"{t.issuer}/builds/1", headers={"Authorization": f"Bearer {t.token()}"}, timeout=10), 401, "invalid_token"),
    Attack("closing a build id in non-ASCII digits", lambda t: requests.delete(f"{t.issuer}/builds/\u0661\u0662", headers=CI, timeout=10), 400, "invalid_request"),
    Attack("closing a build id that is not a number", lambda t: requests.delete(f"{t.issuer}/builds/1%3B2", headers=CI, timeout=10), 400, "invalid_request"),
    Attack("closing a build id with a leading zero", lambda t: requests.delete(f"{t.issuer}/builds/05003", headers=CI, timeout=10), 400, "invalid_request"),
    Attack("opening a build id with a leading zero", open_with(CI, {**CONTEXT, "build_id": "05003"}), 400, "invalid_request"),
    Attack("a repo ../x", open_with(CI, {**CONTEXT, "repo": "../x"}), 400, "invalid_request"),
    Attack("a repo x/..", open_with(CI, {**CONTEXT, "repo": "x/.."}), 400, "invalid_request"),
    # Audience smuggling.
    Attack("no audience", audience("x=1"), 400, "invalid_audience"),
    Attack("empty audience", audience("audience="), 400, "invalid_audience"),
    Attack("audience=a&audience= (empty second)", audience("audience=a&audience="), 400, "invalid_audience"),
    Attack("comma-joined audiences", audience("audience=a,b"), 400, "invalid_audience"),
    Attack("URL-encoded comma", audience("audience=a%2Cb"), 400, "invalid_audience"),
    Attack("CRLF in the audience", audience("audience=a%0D%0ASet-Cookie:%20x=1"), 400, "invalid_audience"),
    Attack("NUL in the audience", audience("audience=a%00b"), 400, "invalid_audience"),
    Attack("non-UTF-8 audience", audience("audience=%FF%FE"), 400, "invalid_audience"),
    Attack("malformed percent-escape in the audience", raw_audience("audience=%ZZ"), 400, "invalid_audience"),
    Attack("truncated percent-escape in the audience", raw_audience("audience=sts.amazonaws.com%4"), 400, "invalid_audience"),
    Attack("a bare % in the audience", raw_audience("audience=100%"), 400, "invalid_audience"),
    Attack("11 audiences", audience("&".join(f"audience=a{i}" for i in range(11))), 400, "invalid_audience"),
    Attack("a 300-character audience", audience("audience=" + "a" * 300), 400, "invalid_audience"),
    # Header injection through claims: refused where the claim enters.
    Attack("CRLF in the step name", open_with(CI, {**CONTEXT, "step": "a\r\nX-Evil: 1"}), 400, "invalid_request"),
    Attack("line separator in the actor", open_with(CI, {**CONTEXT, "actor": "a\u2028b"}), 400, "invalid_request"),
    Attack("':key:' injected through the ref", open_with(CI, {**CONTEXT, "ref": "refs/heads/x:event:tag"}), 400, "invalid_request"),
    Attack("an image that is not a reference", open_with(CI, {**CONTEXT, "image": "UPPER/Case:tag"}), 400, "invalid_request"),
    Attack("unknown context field", open_with(CI, {**CONTEXT, "sub": "repo:evil/repo"}), 400, "invalid_request"),
    # Oversized and malformed input.
    Attack("body over 64 KiB", open_with(CI, {**CONTEXT, "pad": "x" * 70_000}), 413, "request_too_large"),
    Attack("a header over 8190 bytes", lambda t: t.exchange("a" * 9000), 431, "request_too_large"),
    Attack("more than 50 headers", lambda t: requests.get(f"{t.issuer}/healthz", headers={f"X-H{i}": "1" for i in range(50)}, timeout=10), 431, "request_too_large"),
    Attack("URL over 8190 bytes", audience("&".join(["audience=a"] * 1000)), 414, "request_too_large"),
    Attack("body that is not JSON", open_with(CI, raw=b"{not json"), 400, "invalid_request"),
    Attack("body that is not UTF-8", open_with(CI, raw=b'{"repo": "\xff\xfe"}'), 400, "invalid_request"),
    Attack("form body instead of JSON", open_with(CI, raw=b"repo=a/b", content_type="application/x-www-form-urlencoded"), 400, "invalid_request"),
    Attack("JSON nested 30000 deep (under 64 KiB)", open_with(CI, raw=b"[" * 30000 + b"]" * 30000), 400, "invalid_request"),
    Attack("a context too large for a request token", open_with(CI, {**CONTEXT, "ref": "refs/" + "\u4e2d" * 500, "branch": "\u4e2d" * 500, "step": "\u4e2d" * 256, "actor": "\u4e2d" * 256, "request": "\u4e2d" * 256, "sha": "\u4e2d" * 128, "event": "\u4e2d" * 128}), 400, "invalid_request"),
    Attack("a lone surrogate in the context", open_with(CI, raw=b'{"step": "s\\ud800"}'), 400, "invalid_request"),
    Attack("JSON that is not an object", open_with(CI, [1, 2]), 400, "invalid_request"),
    # A CI server that checks the first `repo` while the issuer kept the last would be fooled.
    Attack("a context naming repo twice", open_with(CI, raw=json.dumps(CONTEXT)[:-1].encode() + b', "repo": "victim-org/x"}'), 400, "invalid_request"),
    Attack("a duplicate key nested in the context", open_with(CI, raw=json.dumps({**CONTEXT, "image": {"a": 2}}).encode().replace(b'{"a": 2}', b'{"a": 1, "a": 2}')), 400, "invalid_request"),
    Attack("wrong method", lambda t: requests.put(f"{t.issuer}/request-tokens", headers=CI, timeout=10), 405, "method_not_allowed"),
    Attack("OPTIONS on the GitHub exchange", lambda t: requests.options(f"{t.issuer}/id-token?audience=a", headers={"Authorization": f"Bearer {t.token()}"}, timeout=10), 405, "method_not_allowed"),
    Attack("OPTIONS on the Vela exchange", lambda t: requests.options(f"{t.base}/api/v1/repos/octo-org/octo-repo/builds/42/id_token?audience=a", headers={"Authorization": f"Bearer {t.token()}"}, timeout=10), 405, "method_not_allowed"),
]  # fmt: skip


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_refused(target: Target, attack: Attack) -> None:
    response = attack.send(target)
    assert response.status_code == attack.status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == attack.error
    assert body["error_description"], "the description must say what to fix"
    assert not TOKEN_FIELDS & set(body)
    assert response.headers["Cache-Control"] == "no-store"
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    # Nothing the attacker sent comes back as a header of its own.
    assert "X-Evil" not in response.headers and "Set-Cookie" not in response.headers


def test_every_row_names_a_distinct_attack() -> None:
    names = [a.name for a in ATTACKS]
    assert len(names) == len(set(names))


# --- what a legitimate answer must carry too ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/.well-known/openid-configuration", 200),
        ("/.well-known/jwks", 200),
        ("/openapi.json", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/no-such-path", 404),
    ],
)
def test_security_headers_on_every_response(target: Target, path: str, status: int) -> None:
    response = requests.get(f"{target.issuer}{path}", timeout=10)
    assert response.status_code == status
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    # Only the public documents may be cached; everything else is no-store.
    cacheable = path.startswith("/.well-known") or path == "/openapi.json"
    assert ("no-store" in response.headers["Cache-Control"]) is not cacheable


def test_token_answers_are_never_cached(target: Target) -> None:
    opened = requests.post(
        f"{target.issuer}/request-tokens", json={**CONTEXT, "build_id": 1}, headers=CI, timeout=10
    )
    exchanged = target.exchange(opened.json()["token"])
    for response in (opened, exchanged):
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Pragma"] == "no-cache"


def test_forwarded_headers_do_not_change_the_issuer(target: Target) -> None:
    # Every URL the issuer writes comes from IDP_ISSUER, never from what the client claims.
    spoof = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
    }
    token = target.exchange(target.token()).json()["value"]
    discovery = requests.get(
        f"{target.issuer}/.well-known/openid-configuration", headers=spoof, timeout=10
    ).json()
    opened = requests.post(
        f"{target.issuer}/request-tokens",
        json={**CONTEXT, "build_id": 2},
        headers={**CI, **spoof},
        timeout=10,
    ).json()
    assert "evil" not in json.dumps(discovery) + json.dumps(opened["env"])
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == discovery["issuer"]


# --- no redirect, ever ------------------------------------------------------------------------


def _route_paths(tmp: Path) -> list[tuple[str, list[str]]]:
    """Every route of the app (from its own URL map, so a new route is covered at once), as a
    concrete path below the issuer's path, with its methods."""
    from idp.app import create_app
    from idp.config import load_settings

    app = create_app(load_settings({"IDP_KEYS_DIR": str(tmp)}), start_refresh=False)
    try:
        values = {"build_id": "1", "org": "octo-org", "repo": "octo-repo", "build_number": "42"}
        routes = []
        for rule in app.url_map.iter_rules():
            path = rule.rule
            for name in rule.arguments:
                path = path.replace(f"<{name}>", values[name])
            routes.append((path, sorted(rule.methods or ())))
        return routes
    finally:
        app.extensions["idp.keyring"].stop()


def _variants(path: str) -> list[str]:
    """The path with a doubled slash at each '/', and with a trailing slash."""
    doubled = [path[:i] + "/" + path[i:] for i, ch in enumerate(path) if ch == "/"]
    return [*doubled, path + "/", path + "//"]


def test_no_path_redirects_to_the_clients_host(
    target: Target, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`//x` answered 308 with `Location: http://<client's Host>/x` and an HTML body
    (werkzeug's slash merging). No route, method or slash variant may redirect, or carry the
    client's Host anywhere; every answer is JSON."""
    hostile = "evil.example"
    problems = []
    routes = _route_paths(tmp_path_factory.mktemp("routes"))
    assert len(routes) >= 9
    for path, methods in routes:
        for variant in _variants(path):
            for method in sorted({*methods, "GET", "POST", "HEAD", "OPTIONS"}):
                conn = http.client.HTTPConnection("127.0.0.1", target.proc.port, timeout=10)
                conn.putrequest(method, variant, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", hostile)
                conn.putheader("X-Forwarded-Host", hostile)
                conn.putheader("Authorization", f"Bearer {CI_SECRET}")
                conn.endheaders()
                answer = conn.getresponse()
                body = answer.read()
                conn.close()
                where = f"{method} {variant}: {answer.status}"
                if 300 <= answer.status < 400 or answer.getheader("Location") is not None:
                    problems.append(f"{where} redirects to {answer.getheader('Location')}")
                if answer.status >= 500:
                    problems.append(f"{where} is a server error")
                if hostile.encode() in body or any(hostile in v for _, v in answer.getheaders()):
                    problems.append(f"{where} carries the client's Host")
                # A leading '//' reaches the route itself (gunicorn reads it as an absolute
                # path, RFC 9112 3.2.1): /metrics then answers its Prometheus text.
                metrics = path.endswith("/metrics") and answer.status == 200
                if metrics:
                    continue
                if not (answer.getheader("Content-Type") or "").startswith("application/json"):
                    problems.append(f"{where} is not JSON")
                if method != "HEAD" and answer.status != 304:
                    try:
                        json.loads(body)
                    except ValueError:
                        problems.append(f"{where} has a body that is not JSON: {body[:60]!r}")
    assert not problems, "\n".join(problems)
