"""The physical limit of minting: the raw signing rate of the issuer's own key.

The issuer's current signing key is read from its store and opened with its key-encryption key;
then as many processes as gunicorn has workers sign the exact claims a token exchange signs
(same library, joserfc; same alg; same header), all at once, for the same duration. Their
summed rate is what the machine allows when it does nothing but sign. The other ceiling, the
framework's floors for JWKS and discovery and for minting, are load runs against `bench.floor`.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.servers import BUILD_CONTEXT
from idp.config import Settings
from idp.keys.material import Sealer
from idp.keys.ring import RingDoc, current_key
from idp.store import create_store
from idp.tokens.claims import id_token_claims
from idp.tokens.context import parse_context

AUDIENCE = "sts.amazonaws.com"


@dataclass(frozen=True)
class SigningCeiling:
    processes: int
    alg: str
    kid: str
    claims_bytes: int
    tokens: int
    seconds: float
    tokens_per_s: float
    ms_per_token: float  # wall time of one signature in one process
    cpu_ms_per_token: float  # CPU time of one signature: what the machine's load cannot skew
    late_start_s: float  # how far the last process started after the common start


@dataclass(frozen=True)
class _Job:
    jwk: dict[str, Any]
    header: dict[str, str]
    claims: dict[str, Any]
    start_at: float
    seconds: float


def _sign_for(job: _Job) -> tuple[int, float, float, float]:
    """Runs in a fresh process: sign until the deadline; (count, elapsed, CPU, late start)."""
    from joserfc import jwt
    from joserfc.jwk import JWKRegistry

    key = JWKRegistry.import_key(job.jwk)
    for _ in range(20):  # warm caches and lazy imports before the clock starts
        jwt.encode(job.header, job.claims, key)
    time.sleep(max(0.0, job.start_at - time.time()))
    started = time.time()
    cpu_started = time.process_time()
    deadline = job.start_at + job.seconds
    count = 0
    while True:
        jwt.encode(job.header, job.claims, key)
        count += 1
        if count % 16 == 0 and time.time() >= deadline:
            break
    elapsed, cpu = time.time() - started, time.process_time() - cpu_started
    return count, elapsed, cpu, max(0.0, started - job.start_at)


def exchange_claims(settings: Settings) -> dict[str, Any]:
    """The claims `GET /id-token?audience=sts.amazonaws.com` signs for the bench's steps."""
    ctx = parse_context({**BUILD_CONTEXT, "build_id": 5000, "step": "deploy-0"})
    return id_token_claims(ctx, [AUDIENCE], settings, int(time.time()))


def current_signing_jwk(settings: Settings) -> tuple[str, str, dict[str, Any]]:
    """(alg, kid, private JWK) of the key the issuer signs with now, read from its store."""
    raw = create_store(settings).read_ring()
    if raw is None:
        raise RuntimeError("the issuer's key store holds no key ring yet")
    doc = RingDoc.from_json(raw)
    record = current_key(doc.keys, time.time())
    if record is None:
        raise RuntimeError("the issuer's key ring has no key inside its signing window")
    jwk = Sealer(settings.key_encryption_keys).open(record.private, f"private key {record.kid}")
    return record.alg, record.kid, jwk


def write_signing_spec(settings: Settings, path: Path) -> Path:
    """The key, header and claims the minting floor (`bench.floor --signing`) signs with."""
    alg, kid, jwk = current_signing_jwk(settings)
    spec = {"jwk": jwk, "header": {"alg": alg, "kid": kid, "typ": "JWT"}}
    spec["claims"] = exchange_claims(settings)
    path.touch(mode=0o600)
    path.write_text(json.dumps(spec))
    return path


def signing_ceiling(
    settings: Settings, processes: int, seconds: float, rounds: int = 2
) -> SigningCeiling:
    """The best of `rounds` rounds of `seconds / rounds`: a neighbour's burst of CPU during
    one round does not lower the ceiling every ratio is taken against."""
    alg, kid, jwk = current_signing_jwk(settings)
    claims = exchange_claims(settings)
    header = {"alg": alg, "kid": kid, "typ": "JWT"}
    best: SigningCeiling | None = None
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        lead = 2.0  # the first round waits for the spawned processes to import joserfc
        for _ in range(rounds):
            job = _Job(jwk, header, claims, time.time() + lead, seconds / rounds)
            found = _ceiling(list(pool.map(_sign_for, [job] * processes)), alg, kid, claims)
            if best is None or found.tokens_per_s > best.tokens_per_s:
                best = found
            lead = 0.3
    assert best is not None
    return best


def _ceiling(
    results: list[tuple[int, float, float, float]], alg: str, kid: str, claims: dict[str, Any]
) -> SigningCeiling:
    tokens = sum(count for count, _, _, _ in results)
    return SigningCeiling(
        processes=len(results),
        alg=alg,
        kid=kid,
        claims_bytes=len(json.dumps(claims, separators=(",", ":"))),
        tokens=tokens,
        seconds=max(elapsed for _, elapsed, _, _ in results),
        tokens_per_s=sum(count / elapsed for count, elapsed, _, _ in results),
        ms_per_token=sum(elapsed / count for count, elapsed, _, _ in results) / len(results) * 1000,
        cpu_ms_per_token=sum(cpu for _, _, cpu, _ in results) / tokens * 1000,
        late_start_s=max(late for _, _, _, late in results),
    )
