"""`idp ci open` and `idp ci close` as a CI server runs them: real processes, a real `idp serve`,
a real `sh` evaluating what `open` prints, and PyJWT checking the token a step then gets.

Where the issuer cannot be made to misbehave (a redirect, a proxy's HTML page, a hostile `env`,
a private CA, a hung socket), a small loopback server plays it; nothing is mocked in-process.
"""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dotenv
import jwt
import pytest
import requests

from tests.aws.tls import Pki
from tests.support import CI_SECRET, ROOT, IssuerProcess, free_port
from tests.unit.test_claims import CONTEXT
from tests.unit.test_claims_file import OCTOPUS, OCTOPUS_CONTEXT

AUDIENCE = "sts.amazonaws.com"
ENV_NAMES = {
    "VELA_ID_TOKEN_REQUEST_URL",
    "VELA_ID_TOKEN_REQUEST_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
}

_builds = iter(range(10_000, 20_000))


def new_context(**changes: Any) -> dict[str, Any]:
    """CONTEXT for a build of its own: closing one test's build never touches another's."""
    return {**CONTEXT, "build_id": next(_builds), **changes}


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerProcess]:
    keys = tmp_path_factory.mktemp("ci-keys")
    with IssuerProcess({"IDP_KEYS_DIR": str(keys)}) as proc:
        yield proc


def run(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    issuer: IssuerProcess | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """`idp ARGS` as a CI server would run it: the issuer and secret from the environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    if issuer is not None:
        base |= {"IDP_ISSUER": issuer.issuer, "IDP_CI_SECRET": CI_SECRET}
    result = subprocess.run(
        [sys.executable, "-m", "idp", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        cwd=cwd,
        env={**base, **(env or {})},
    )
    # Whatever happens, the CI secret is never printed.
    assert CI_SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, result
    assert result.stdout == ""
    assert result.stderr.startswith("idp: error: ") and result.stderr.count("\n") == 1, result
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def write_context(directory: Path, context: Any) -> Path:
    path = directory / "context.json"
    path.write_text(json.dumps(context) if not isinstance(context, str) else context)
    return path


def verify(issuer: IssuerProcess, token: str, audience: str = AUDIENCE) -> dict[str, Any]:
    """PyJWT against the served JWKS, as any relying party would."""
    client = jwt.PyJWKClient(f"{issuer.issuer}/.well-known/jwks", cache_keys=False)
    claims: dict[str, Any] = jwt.decode(
        token,
        client.get_signing_key_from_jwt(token).key,
        algorithms=["RS256"],
        audience=audience,
        issuer=issuer.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return claims


def mint(env: dict[str, str]) -> requests.Response:
    """What a step does with the printed environment: GitHub's protocol, by hand."""
    return requests.get(
        f"{env['ACTIONS_ID_TOKEN_REQUEST_URL']}&audience={AUDIENCE}",
        headers={"Authorization": f"Bearer {env['ACTIONS_ID_TOKEN_REQUEST_TOKEN']}"},
        timeout=10,
    )


def opened_env(issuer: IssuerProcess, tmp_path: Path, *args: str, **ctx: Any) -> dict[str, str]:
    path = write_context(tmp_path, new_context(**ctx))
    result = run("ci", "open", "--context", str(path), "--format", "json", *args, issuer=issuer)
    assert result.returncode == 0, result
    env: dict[str, str] = json.loads(result.stdout)["env"]
    return env


# --- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("ci",), ("ci", "--help"), ("ci", "open", "--help"), ("ci", "close", "--help")]
)
def test_help(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 0 and result.stderr == "", result
    assert result.stdout.startswith("Usage: idp ci")
    if "open" in args:
        for shown in ("IDP_ISSUER", "IDP_CI_SECRET_FILE", "IDP_CI_CONTEXT", "IDP_CAFILE"):
            assert shown in result.stdout


def test_ci_is_listed_by_idp() -> None:
    assert "ci " in run("--help").stdout


# --- the three formats ---------------------------------------------------------------------


def test_env_format_evaluated_by_sh_then_idp_token_gets_a_verified_id_token(
    issuer: IssuerProcess, tmp_path: Path
) -> None:
    context = write_context(tmp_path, new_context())
    opened = run(
        "ci", "open", "--context", str(context), "--set", "step=it's deploy", issuer=issuer
    )
    assert opened.returncode == 0 and opened.stderr == "", opened
    lines = opened.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("export ") for line in lines)
    assert {line.split("=", 1)[0].removeprefix("export ") for line in lines} == ENV_NAMES
    (tmp_path / "step.env").write_text(opened.stdout)
    # The step: a real POSIX sh sources the file and runs `idp token` in that environment,
    # with nothing of the CI server's own (no IDP_CI_SECRET).
    step = subprocess.run(
        ["sh", "-c", '. ./step.env && "$PYTHON" -m idp token --audience "$AUDIENCE"'],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={
            "PATH": os.environ["PATH"],
            "PYTHON": sys.executable,
            "PYTHONPATH": str(ROOT),
            "AUDIENCE": AUDIENCE,
        },
    )
    assert step.returncode == 0, step
    claims = verify(issuer, step.stdout.strip())
    assert claims["repo"] == "octo-org/octo-repo" and claims["step"] == "it's deploy"


def test_env_format_through_eval(issuer: IssuerProcess, tmp_path: Path) -> None:
    context = write_context(tmp_path, new_context())
    step = subprocess.run(
        [
            "sh",
            "-c",
            'eval "$("$PYTHON" -m idp ci open --context "$CONTEXT")" && '
            'env -u IDP_CI_SECRET "$PYTHON" -m idp token --audience "$AUDIENCE"',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHON": sys.executable,
            "CONTEXT": str(context),
            "AUDIENCE": AUDIENCE,
            "IDP_ISSUER": issuer.issuer,
            "IDP_CI_SECRET": CI_SECRET,
        },
    )
    assert step.returncode == 0, step
    verify(issuer, step.stdout.strip())


def test_dotenv_format_is_name_value_lines(issuer: IssuerProcess, tmp_path: Path) -> None:
    context = write_context(tmp_path, new_context())
    result = run("ci", "open", "--context", str(context), "--format", "dotenv", issuer=issuer)
    assert result.returncode == 0, result
    # docker --env-file's reading: everything after the first '=' is the value.
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(env) == ENV_NAMES
    assert env["VELA_ID_TOKEN_REQUEST_TOKEN"] == env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"]
    # python-dotenv (what compose-style readers do) reads the same values.
    (tmp_path / ".env").write_text(result.stdout)
    assert dotenv.dotenv_values(tmp_path / ".env") == env
    verify(issuer, mint(env).json()["value"])


def test_json_format_is_the_issuers_answer(issuer: IssuerProcess, tmp_path: Path) -> None:
    context = write_context(tmp_path, new_context())
    result = run("ci", "open", "--context", str(context), "--format", "json", issuer=issuer)
    assert result.returncode == 0, result
    answer = json.loads(result.stdout)
    assert set(answer) == {"token", "expires_at", "env"} and set(answer["env"]) == ENV_NAMES
    assert answer["env"]["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] == answer["token"]
    assert answer["expires_at"] > time.time()


def test_the_format_can_come_from_the_environment(issuer: IssuerProcess, tmp_path: Path) -> None:
    context = write_context(tmp_path, new_context())
    result = run(
        "ci", "open", env={"IDP_CI_FORMAT": "json", "IDP_CI_CONTEXT": str(context)}, issuer=issuer
    )
    assert result.returncode == 0 and set(json.loads(result.stdout)) >= {"env"}, result


def test_context_from_stdin(issuer: IssuerProcess) -> None:
    result = run(
        "ci",
        "open",
        "--context",
        "-",
        "--format",
        "json",
        stdin=json.dumps(new_context()),
        issuer=issuer,
    )
    assert result.returncode == 0, result
    assert set(json.loads(result.stdout)["env"]) == ENV_NAMES


# --- --set ----------------------------------------------------------------------------------

# (context changes, --set, the claim it shows in the ID token)
SET_CASES = [
    pytest.param({}, "step=build and test", ("step", "build and test"), id="text"),
    pytest.param({}, "step=a=b", ("step", "a=b"), id="value-with-equals"),
    pytest.param({}, "pull_fork=true", ("pull_fork", "true"), id="builtin-bool"),
    pytest.param({}, "commands=TRUE", ("commands", "true"), id="bool-any-case"),
    pytest.param({}, "build_number=43", ("build_number", "43"), id="number-in-context"),
    pytest.param({"build_number": "42"}, "build_number=44", ("build_number", "44"), id="digits"),
    pytest.param({"actor": 7}, "actor=octocat", None, id="number-field-refused-by-type"),
    pytest.param({}, "sha=abc123", ("sha", "abc123"), id="text-stays-text"),
]


@pytest.mark.parametrize(("changes", "assignment", "claim"), SET_CASES)
def test_set_keeps_the_type_the_field_has(
    issuer: IssuerProcess,
    tmp_path: Path,
    changes: dict[str, Any],
    assignment: str,
    claim: tuple[str, str] | None,
) -> None:
    context = write_context(tmp_path, new_context(**changes))
    result = run(
        "ci",
        "open",
        "--context",
        str(context),
        "--set",
        assignment,
        "--format",
        "json",
        issuer=issuer,
    )
    if claim is None:
        one_line_error(result, 2, "--set", "whole number")
        return
    assert result.returncode == 0, result
    name, value = claim
    assert verify(issuer, mint(json.loads(result.stdout)["env"]).json()["value"])[name] == value


def test_a_later_set_wins_and_ttl_is_a_number(issuer: IssuerProcess, tmp_path: Path) -> None:
    context = write_context(tmp_path, new_context())
    before = time.time()
    result = run(
        "ci",
        "open",
        "--context",
        str(context),
        "--format",
        "json",
        "--set",
        "step=one",
        "--set",
        "step=two",
        "--set",
        "ttl=600",
        issuer=issuer,
    )
    assert result.returncode == 0, result
    answer = json.loads(result.stdout)
    assert before + 590 <= answer["expires_at"] <= time.time() + 610
    assert verify(issuer, mint(answer["env"]).json()["value"])["step"] == "two"


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("pull_fork=yes", "true or false"),
        ("commands=1", "true or false"),
        ("build_id=abc", "whole number"),
        ("build_id=01234", "whole number"),
        ("ttl=ten", "whole number"),
        ("a.b=x", "plain name"),
        ("=x", "plain name"),
        ("1st=x", "plain name"),
        ("step", "CLAIM=VALUE"),
    ],
)
def test_set_refusals_are_usage_errors(
    issuer: IssuerProcess, tmp_path: Path, assignment: str, fragment: str
) -> None:
    context = write_context(tmp_path, new_context())
    result = run("ci", "open", "--context", str(context), "--set", assignment, issuer=issuer)
    one_line_error(result, 2, fragment)


# --- failures, one line each ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "is not JSON"), ("[1, 2]", "not an object"), ("", "is not JSON")],
)
def test_a_context_that_is_not_a_json_object_is_a_usage_error(
    issuer: IssuerProcess, tmp_path: Path, content: str, fragment: str
) -> None:
    path = write_context(tmp_path, content)
    one_line_error(run("ci", "open", "--context", str(path), issuer=issuer), 2, fragment)
    one_line_error(run("ci", "open", "--context", "-", stdin=content, issuer=issuer), 2, fragment)


def test_a_missing_context_is_a_usage_error(issuer: IssuerProcess, tmp_path: Path) -> None:
    one_line_error(run("ci", "open", issuer=issuer), 2, "--context")
    missing = str(tmp_path / "nope.json")
    one_line_error(run("ci", "open", "--context", missing, issuer=issuer), 2, "does not exist")


def test_a_context_the_issuer_refuses_is_its_description(
    issuer: IssuerProcess, tmp_path: Path
) -> None:
    path = write_context(tmp_path, new_context(pull_fork="no"))
    one_line_error(
        run("ci", "open", "--context", str(path), issuer=issuer),
        1,
        "400 invalid_request",
        "'pull_fork' must be true or false",
    )


def test_a_wrong_secret_is_one_line(issuer: IssuerProcess, tmp_path: Path) -> None:
    path = write_context(tmp_path, new_context())
    wrong = "wrong-secret-0123456789-0123456789-abc"
    result = run("ci", "open", "--context", str(path), issuer=issuer, env={"IDP_CI_SECRET": wrong})
    one_line_error(result, 1, "401", "secret is wrong", "IDP_CI_SECRET")
    assert wrong not in result.stderr


def test_no_secret_says_which_setting(issuer: IssuerProcess, tmp_path: Path) -> None:
    path = write_context(tmp_path, new_context())
    result = run("ci", "open", "--context", str(path), env={"IDP_ISSUER": issuer.issuer})
    one_line_error(result, 2, "IDP_CI_SECRET")


def test_the_secret_from_a_file_and_the_first_of_several(
    issuer: IssuerProcess, tmp_path: Path
) -> None:
    path = write_context(tmp_path, new_context())
    secret_file = tmp_path / "secret"
    secret_file.write_text(f"{CI_SECRET},another-secret-0123456789-0123456789\n")
    env = {"IDP_ISSUER": issuer.issuer}
    by_env = run(
        "ci", "open", "--context", str(path), env={**env, "IDP_CI_SECRET_FILE": str(secret_file)}
    )
    assert by_env.returncode == 0, by_env
    by_flag = run(
        "ci",
        "open",
        "--context",
        str(path),
        "--secret-file",
        str(secret_file),
        env={**env, "IDP_CI_SECRET": "ignored-because-the-flag-wins-0123456789"},
    )
    assert by_flag.returncode == 0, by_flag
    both = run(
        "ci",
        "open",
        "--context",
        str(path),
        env={**env, "IDP_CI_SECRET_FILE": str(secret_file), "IDP_CI_SECRET": CI_SECRET},
    )
    one_line_error(both, 2, "keep only one")


def test_an_unreachable_issuer_is_one_line(tmp_path: Path) -> None:
    path = write_context(tmp_path, new_context())
    issuer = f"http://127.0.0.1:{free_port()}/_services/token"
    result = run(
        "ci",
        "open",
        "--context",
        str(path),
        "--issuer",
        issuer,
        env={"IDP_CI_SECRET": CI_SECRET},
    )
    one_line_error(result, 1, "no answer from", issuer, "IDP_ISSUER")
    one_line_error(
        run("ci", "close", "7", "--issuer", issuer, env={"IDP_CI_SECRET": CI_SECRET}),
        1,
        "no answer from",
    )


def test_a_wrong_issuer_path_is_one_line(issuer: IssuerProcess, tmp_path: Path) -> None:
    path = write_context(tmp_path, new_context())
    result = run("ci", "open", "--context", str(path), "--issuer", issuer.base, issuer=issuer)
    one_line_error(result, 1, "404", "path included")


# --- close ----------------------------------------------------------------------------------


def test_close_stops_the_builds_request_tokens(issuer: IssuerProcess, tmp_path: Path) -> None:
    context = new_context()
    env = opened_env(issuer, tmp_path, build_id=context["build_id"])
    assert mint(env).status_code == 200
    closed = run("ci", "close", str(context["build_id"]), issuer=issuer)
    assert closed.returncode == 0 and closed.stderr == "", closed
    assert (
        closed.stdout == f"closed build {context['build_id']}: its request tokens no longer work\n"
    )
    refused = mint(env)
    assert refused.status_code == 401 and "closed" in refused.json()["error_description"]
    # Closing twice is fine (a `trap` may run after an explicit close); opening is refused.
    assert run("ci", "close", str(context["build_id"]), issuer=issuer).returncode == 0
    path = write_context(tmp_path, context)
    one_line_error(run("ci", "open", "--context", str(path), issuer=issuer), 1, "already closed")


@pytest.mark.parametrize("build_id", ["05003", "abc", "1.5", "1/2", ""])
def test_close_refuses_what_is_not_a_build_id(issuer: IssuerProcess, build_id: str) -> None:
    one_line_error(run("ci", "close", build_id, issuer=issuer), 2, "not a build id")


def test_close_with_a_wrong_secret_is_one_line(issuer: IssuerProcess) -> None:
    result = run(
        "ci",
        "close",
        "5",
        issuer=issuer,
        env={"IDP_CI_SECRET": "wrong-secret-0123456789-0123456789-abc"},
    )
    one_line_error(result, 1, "401", "secret is wrong")


# --- an issuer that misbehaves, played by a loopback server --------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeIssuer:
    """A loopback HTTP(S) server answering with `reply(method, path)`; it records requests."""

    reply: Callable[[str, str], tuple[int, dict[str, str], bytes]]
    certfile: Path | None = None
    seen: list[Seen] = field(default_factory=list)
    hang: bool = False

    def __post_init__(self) -> None:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                fake.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                if fake.hang:
                    time.sleep(3)
                    return
                status, headers, body = fake.reply(self.command, self.path)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer  # noqa: N815 - the standard library's names

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.certfile)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{host}:{self.server.server_address[1]}/_services/token"

    def __enter__(self) -> FakeIssuer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer(env: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"token": "t", "expires_at": 1, "env": env}).encode()
    return 200, {"Content-Type": "application/json"}, body


def run_against(
    fake_url: str, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    path = write_context(tmp_path, new_context())
    return run(
        "ci",
        "open",
        "--context",
        str(path),
        "--issuer",
        fake_url,
        *args,
        env={"IDP_CI_SECRET": CI_SECRET, **env},
    )


HOSTILE = {
    "QUOTE": "it's",
    "SUBST": "$(touch pwned)`touch pwned2`${HOME}",
    "NEWLINE": "one\ntwo",
    "BACKSLASH": "a\\b\\'c",
    "SEMI": "'; touch pwned3; '",
}


def test_env_format_carries_any_value_through_a_real_sh(tmp_path: Path) -> None:
    with FakeIssuer(lambda method, path: answer(HOSTILE)) as fake:
        result = run_against(fake.url(), tmp_path)
    assert result.returncode == 0, result
    (tmp_path / "step.env").write_text(result.stdout)
    script = ". ./step.env && " + " && ".join(f"printf '%s\\0' \"${name}\"" for name in HOSTILE)
    shown = subprocess.run(["sh", "-c", script], capture_output=True, cwd=tmp_path, timeout=10)
    assert shown.returncode == 0, shown
    assert shown.stdout.decode().split("\0")[:-1] == list(HOSTILE.values())
    assert not list(tmp_path.glob("pwned*"))


@pytest.mark.parametrize("value", ["one\ntwo", "a b", "'quoted'", "a#b", "$HOME", "x\\y"])
def test_dotenv_refuses_a_value_readers_would_read_differently(tmp_path: Path, value: str) -> None:
    with FakeIssuer(lambda method, path: answer({"NAME": value})) as fake:
        result = run_against(fake.url(), tmp_path, "--format", "dotenv")
    one_line_error(result, 1, "NAME", "--format env")


def test_a_variable_name_no_shell_can_set_is_refused(tmp_path: Path) -> None:
    with FakeIssuer(lambda method, path: answer({"A;touch x": "v"})) as fake:
        one_line_error(run_against(fake.url(), tmp_path), 1, "no shell can set")


def test_a_redirect_is_not_followed_and_the_secret_goes_nowhere(tmp_path: Path) -> None:
    with FakeIssuer(lambda method, path: answer({"A": "b"})) as elsewhere:
        target = elsewhere.url() + "/request-tokens"
        with FakeIssuer(lambda method, path: (307, {"Location": target}, b"")) as redirecting:
            result = run_against(redirecting.url(), tmp_path)
            close = run(
                "ci",
                "close",
                "5",
                "--issuer",
                redirecting.url(),
                env={"IDP_CI_SECRET": CI_SECRET},
            )
    one_line_error(result, 1, "307", "redirect", "not followed")
    one_line_error(close, 1, "not followed")
    assert elsewhere.seen == []
    assert [s.headers["Authorization"] for s in redirecting.seen] == [f"Bearer {CI_SECRET}"] * 2


def test_an_answer_that_is_not_the_issuers_json_is_one_line(tmp_path: Path) -> None:
    page = (200, {"Content-Type": "text/html"}, b"<html>proxy login</html>")
    with FakeIssuer(lambda method, path: page) as fake:
        one_line_error(run_against(fake.url(), tmp_path), 1, fake.url(), "HTTP 200", "--issuer")
    error = (502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>")
    with FakeIssuer(lambda method, path: error) as fake:
        result = run_against(fake.url(), tmp_path)
    assert result.returncode == 1 and result.stderr.splitlines()[-1].startswith("idp: error: ")
    assert "HTTP 502" in result.stderr.splitlines()[-1]


def test_a_busy_issuer_is_retried(tmp_path: Path) -> None:
    replies = iter(
        [
            (
                503,
                {"Retry-After": "0", "Content-Type": "application/json"},
                b'{"error":"temporarily_unavailable","error_description":"restoring"}',
            ),
            answer({"A": "b"}),
        ]
    )
    with FakeIssuer(lambda method, path: next(replies)) as fake:
        result = run_against(fake.url(), tmp_path, "--format", "dotenv")
    assert result.returncode == 0 and result.stdout == "A=b\n", result
    assert result.stderr.startswith("idp: the issuer refused") and "retry 1" in result.stderr


def test_an_issuer_busy_for_good_ends_in_its_refusal(tmp_path: Path) -> None:
    busy = (
        429,
        {"Retry-After": "0", "Content-Type": "application/json"},
        b'{"error":"slow_down","error_description":"too many requests"}',
    )
    with FakeIssuer(lambda method, path: busy) as fake:
        result = run_against(fake.url(), tmp_path)
    assert result.returncode == 1 and result.stdout == "", result
    notes, last = result.stderr.splitlines()[:-1], result.stderr.splitlines()[-1]
    assert len(notes) == 2 and all("retry" in note for note in notes)
    assert last == (
        "idp: error: the issuer refused to open a request token: 429 slow_down: too many requests"
    )
    assert len(fake.seen) == 3


def test_a_hung_issuer_times_out_in_one_line(tmp_path: Path) -> None:
    with FakeIssuer(lambda method, path: answer({}), hang=True) as fake:
        result = run_against(fake.url(), tmp_path, "--timeout", "0.5")
    one_line_error(result, 1, "did not answer within 0.5s", "--timeout")


def test_tls_is_verified_and_cafile_trusts_a_private_ca(tmp_path: Path) -> None:
    pki = Pki.create("localhost")
    certfile = pki.server_pem(tmp_path)
    with FakeIssuer(lambda method, path: answer({"A": "b"}), certfile=certfile) as fake:
        untrusted = run_against(fake.url("localhost"), tmp_path)
        (tmp_path / "ca.pem").write_bytes(pki.root_pem)
        trusted = run_against(fake.url("localhost"), tmp_path, "--cafile", str(tmp_path / "ca.pem"))
        by_env = run_against(fake.url("localhost"), tmp_path, IDP_CAFILE=str(tmp_path / "ca.pem"))
        wrong_name = run_against(
            fake.url("127.0.0.1"), tmp_path, "--cafile", str(tmp_path / "ca.pem")
        )
    one_line_error(untrusted, 1, "does not verify", "--cafile")
    assert trusted.returncode == 0 and trusted.stdout == "export A='b'\n", trusted
    assert by_env.returncode == 0, by_env
    one_line_error(wrong_name, 1, "does not verify")
    # Only the handshakes that verified carried the secret.
    assert len(fake.seen) == 2


def test_the_request_is_json_with_the_context_and_the_bearer_secret(tmp_path: Path) -> None:
    with FakeIssuer(lambda method, path: answer({"A": "b"})) as fake:
        result = run_against(fake.url(), tmp_path, "--set", "step=x", "--set", "pull_fork=true")
    assert result.returncode == 0, result
    (seen,) = fake.seen
    assert (seen.method, seen.path) == ("POST", "/_services/token/request-tokens")
    assert seen.headers["Authorization"] == f"Bearer {CI_SECRET}"
    assert seen.headers["Content-Type"] == "application/json"
    sent = json.loads(seen.body)
    assert (sent["step"], sent["pull_fork"]) == ("x", True)
    assert isinstance(sent["build_id"], int)  # untouched fields keep their JSON types
    assert set(sent) == set(CONTEXT)


def test_a_cafile_that_is_not_pem_is_a_usage_error(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    result = run_against("https://localhost:1/_services/token", tmp_path, "--cafile", str(not_pem))
    one_line_error(result, 2, "--cafile", "PEM")


def test_a_context_file_with_a_byte_order_mark(issuer: IssuerProcess, tmp_path: Path) -> None:
    path = tmp_path / "windows.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(new_context()).encode())
    result = run("ci", "open", "--context", str(path), "--format", "json", issuer=issuer)
    assert result.returncode == 0, result


def test_set_types_the_claims_files_booleans(tmp_path: Path) -> None:
    # A declared bool claim is a JSON boolean to the issuer; `--set approved=true` sends one
    # when idp ci reads the same claims file (IDP_CLAIMS_FILE), and the issuer takes it.
    claims = tmp_path / "claims.yaml"
    text = OCTOPUS.replace(
        "  runbook:     {kind: text}\n",
        "  runbook:     {kind: text}\n  approved:    {kind: bool}\n",
    )
    claims.write_text(text, encoding="utf-8")
    context = tmp_path / "context.json"
    context.write_text(json.dumps(OCTOPUS_CONTEXT))
    env = {
        "IDP_KEYS_DIR": str(tmp_path / "keys"),
        "IDP_CLAIMS_FILE": str(claims),
        "IDP_CI_SECRET": CI_SECRET,
    }
    with IssuerProcess(env) as issuer:
        args = ("ci", "open", "--context", str(context), "--set", "approved=true")
        without = run(*args, "--format", "json", issuer=issuer)
        assert without.returncode == 1, without.stderr  # sent as text "true": refused
        assert "approved" in without.stderr
        typed = run(*args, "--format", "json", env={"IDP_CLAIMS_FILE": str(claims)}, issuer=issuer)
        assert typed.returncode == 0, typed.stderr
        token = json.loads(typed.stdout)["token"]
        answer = requests.get(
            f"{issuer.issuer}/id-token?audience={AUDIENCE}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        claims_of = jwt.decode(answer.json()["value"], options={"verify_signature": False})
        assert claims_of["approved"] == "true"
        bad = run(*args, env={"IDP_CLAIMS_FILE": str(tmp_path / "missing.yaml")}, issuer=issuer)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_the_secret_over_plain_http_to_another_host_is_said(tmp_path: Path) -> None:
    # Allowed (a cluster-internal Service), but never silently. 192.0.2.1 is TEST-NET-1:
    # nothing answers, so the call ends in its own one-line failure after the warning.
    context = tmp_path / "context.json"
    context.write_text(json.dumps(CONTEXT))
    env = {"IDP_ISSUER": "http://192.0.2.1/_services/token", "IDP_CI_SECRET": CI_SECRET}
    result = run("ci", "open", "--context", str(context), "--timeout", "1", env=env)
    assert result.returncode == 1
    warning, *rest = result.stderr.strip().splitlines()
    assert warning.startswith("idp: warning: the CI secret goes to 192.0.2.1 over plain http")
    assert len(rest) == 1 and rest[0].startswith("idp: error:")
    assert CI_SECRET not in result.stdout + result.stderr
