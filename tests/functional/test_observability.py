"""Metrics across gunicorn workers, and the audit log: one JSON line per token, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.support import CI_SECRET, IssuerProcess
from tests.unit.test_claims import CONTEXT


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def test_metrics_add_up_across_workers_and_audit_lines_carry_no_token(tmp_path: Path) -> None:
    env = {"IDP_KEYS_DIR": str(tmp_path / "keys"), "IDP_LOG_FORMAT": "json"}
    proc = IssuerProcess(env, workers=2)
    with proc:
        opened = requests.post(
            f"{proc.issuer}/request-tokens",
            json=CONTEXT,
            headers={"Authorization": f"Bearer {CI_SECRET}"},
            timeout=10,
        )
        token = opened.json()["token"]
        url = f"{proc.issuer}/id-token?audience=sts.amazonaws.com"
        for _ in range(12):  # new connections: spread over both workers
            response = requests.get(
                url, headers={"Authorization": f"Bearer {token}", "Connection": "close"}, timeout=10
            )
            assert response.status_code == 200
        refused = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert refused.status_code == 401
        text = requests.get(f"{proc.issuer}/metrics", timeout=10).text
    assert sample(text, "idp_id_tokens_total", audience="sts.amazonaws.com", outcome="minted") == 12
    assert sample(text, "idp_id_tokens_total", outcome="invalid_token") == 1
    assert sample(text, "idp_request_tokens_total", outcome="opened") == 1
    assert sample(text, "idp_mint_seconds_count") == 12
    assert sample(text, "idp_keys_published") >= 1

    lines = [
        json.loads(line)
        for line in proc.log.decode().splitlines()
        if line.startswith("{") and '"event":"id_token"' in line
    ]
    minted = [entry for entry in lines if entry["outcome"] == "minted"]
    assert len(minted) == 12 and len(lines) == 13
    for entry in minted:
        assert {"time", "jti", "sub", "aud", "kid", "repo", "build", "step", "client"} <= set(entry)
    assert token not in proc.log.decode() and CI_SECRET not in proc.log.decode()
    assert "eyJ" not in proc.log.decode()  # no JWT of any kind in the logs
