"""`idp serve` and `idp keys` as operators run them: real gunicorn, real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import requests

from tests.support import ROOT, IssuerProcess


def idp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_discovery_and_jwks_over_http_with_a_pyjwt_verifier(live_issuer: IssuerProcess) -> None:
    discovery = requests.get(
        f"{live_issuer.issuer}/.well-known/openid-configuration", timeout=10
    ).json()
    assert discovery["issuer"] == live_issuer.issuer
    assert discovery["jwks_uri"] == f"{live_issuer.issuer}/.well-known/jwks"
    jwks = requests.get(discovery["jwks_uri"], timeout=10)
    assert jwks.status_code == 200 and jwks.headers["ETag"]
    # PyJWT reads every key of the served JWKS as a usable signing key.
    keys = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False).get_signing_keys()
    assert {k.key_id for k in keys} == {k["kid"] for k in jwks.json()["keys"]}


def test_a_token_signed_by_the_key_store_verifies_with_pyjwkclient(
    live_issuer: IssuerProcess,
) -> None:
    # Sign through the issuer's own key ring (same store folder), verify from HTTP only.
    from idp.config import load_settings
    from idp.keys.keyring import KeyRing
    from idp.store import create_store

    settings = load_settings(
        {"IDP_KEYS_DIR": live_issuer.env["IDP_KEYS_DIR"], "IDP_ISSUER": live_issuer.issuer}
    )
    ring = KeyRing(settings, create_store(settings))
    ring.refresh()
    # A token the ring may sign: it expires while its key is still published (the ring
    # refuses one that would outlive the key, as a year-2038 `exp` would).
    exp = int(time.time()) + settings.token_ttl
    token, kid = ring.sign({"iss": live_issuer.issuer, "sub": "x", "aud": "a", "exp": exp})
    client = jwt.PyJWKClient(f"{live_issuer.issuer}/.well-known/jwks", cache_keys=False)
    signing_key = client.get_signing_key_from_jwt(token)
    assert signing_key.key_id == kid
    claims = jwt.decode(token, signing_key.key, algorithms=["RS256"], audience="a")
    assert claims["sub"] == "x"


def test_two_workers_on_an_empty_folder_create_one_ring_and_serve_the_same_jwks(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "empty"
    with IssuerProcess({"IDP_KEYS_DIR": str(keys)}, workers=2) as proc:
        bodies = set()
        for _ in range(40):
            response = requests.get(
                f"{proc.issuer}/.well-known/jwks", timeout=10, headers={"Connection": "close"}
            )
            bodies.add(response.content)
        assert len(bodies) == 1
        served = json.loads(bodies.pop())["keys"]
        assert len(served) == 1
        ring = json.loads((keys / "ring.json").read_text())
        assert [k["kid"] for k in ring["keys"]] == [served[0]["kid"]]
        assert ring["version"] == 1  # written exactly once, by one process


RACE = """
import sys, time
from pathlib import Path
from idp.config import load_settings
from idp.keys.keyring import KeyRing
from idp.store import create_store
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
settings = load_settings({"IDP_KEYS_DIR": sys.argv[2]})
ring = KeyRing(settings, create_store(settings))
ring.refresh()
print(ring.jwks().body.decode())
"""


def test_processes_racing_on_an_empty_folder_create_exactly_one_key(tmp_path: Path) -> None:
    go, keys = tmp_path / "go", tmp_path / "keys"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(go), str(keys)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    go.touch()
    outputs = {p.communicate(timeout=60)[0] for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs) == 1
    assert len(json.loads(outputs.pop())["keys"]) == 1
    assert json.loads((keys / "ring.json").read_text())["version"] == 1


def test_idp_keys_list_shows_the_ring(tmp_path: Path) -> None:
    env = {"IDP_KEYS_DIR": str(tmp_path / "k")}
    listing = idp("keys", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)["keys"]
    assert [r["state"] for r in rows] == ["current"]
    text = idp("keys", "list", env=env)
    assert rows[0]["kid"] in text.stdout and "current" in text.stdout


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"IDP_ISSUER": "ci.example.com"}, "IDP_ISSUER"),
        ({"IDP_SIGNING_ALG": "HS512"}, "IDP_SIGNING_ALG"),
        ({"IDP_TOKEN_TTL": "ten"}, "IDP_TOKEN_TTL"),
    ],
)
def test_bad_configuration_stops_serve_with_one_line(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = idp("serve", "--port", "1", env={"IDP_KEYS_DIR": str(tmp_path), **env})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and lines[0].startswith("idp: error:")
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2_with_one_line() -> None:
    result = idp("serve", "--port", "notaport")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["serve", "--help"],
        ["keys", "--help"],
        ["keys", "list", "--help"],
        ["keys", "rotate", "--help"],
    ],
)
def test_help(command: list[str]) -> None:
    result = idp(*command)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_an_existing_keys_folder_is_made_private(tmp_path: Path) -> None:
    """mkdir's mode only applies to a new folder: an existing 0755 one stayed 0755."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    keys.chmod(0o775)
    from idp.config import load_settings
    from idp.store.file_store import FileStore

    FileStore.create(load_settings({"IDP_KEYS_DIR": str(keys)}))
    assert keys.stat().st_mode & 0o777 == 0o700
    assert (keys / "closed-builds").stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder to another user")
def test_a_keys_folder_others_can_write_and_we_cannot_fix_stops_serve(tmp_path: Path) -> None:
    keys = tmp_path / "shared"
    keys.mkdir()
    (keys / "closed-builds").mkdir()
    for folder in (keys, keys / "closed-builds"):
        os.chown(folder, 65534, 65534)  # nobody's, so the issuer must not chmod it
        folder.chmod(0o777)
    result = idp("serve", "--port", "1", env={"IDP_KEYS_DIR": str(keys)})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("idp: error: IDP_KEYS_DIR="), result.stderr
    assert "writable by group or others" in lines[0] and "Traceback" not in result.stderr
    assert keys.stat().st_mode & 0o777 == 0o777


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder to another user")
def test_a_volume_root_of_our_own_group_is_accepted(tmp_path: Path) -> None:
    """A Kubernetes volume: owned by root (here: nobody), group fsGroup (the issuer's own),
    mode 2775: nobody outside our group can write it."""
    from idp.config import load_settings
    from idp.store.file_store import FileStore

    keys = tmp_path / "volume"
    keys.mkdir()
    os.chown(keys, 65534, os.getegid())
    keys.chmod(0o2775)
    FileStore.create(load_settings({"IDP_KEYS_DIR": str(keys)}))
    assert keys.stat().st_mode & 0o7777 == 0o2775  # not ours to change, and safe as it is
