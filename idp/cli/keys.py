"""`idp keys list|rotate`: the key ring as operators see it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from idp.config import load_settings
from idp.keys.keyring import KeyRing
from idp.store import create_store


def _open_ring() -> KeyRing:
    settings = load_settings()
    ring = KeyRing(settings, create_store(settings))
    ring.refresh()
    return ring


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group()
def keys() -> None:
    """Show or rotate the signing key ring."""


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_keys(as_json: bool) -> None:
    """Show each key with its state (next, current, retired) and times (UTC)."""
    ring = _open_ring()
    rows = ring.describe()
    if as_json:
        click.echo(json.dumps({"store": ring.store.describe(), "keys": rows}, indent=2))
        return
    click.echo(f"key store: {ring.store.describe()}")
    click.echo(
        f"{'KID':<44} {'ALG':<6} {'STATE':<8} {'SIGNS FROM':<21} {'SIGNS UNTIL':<21} REMOVED AT"
    )
    for row in rows:
        click.echo(
            f"{row['kid']:<44} {row['alg']:<6} {row['state']:<8} {_when(row['sign_from']):<21} "
            f"{_when(row['sign_until']):<21} {_when(row['remove_at'])}"
        )


@keys.command("rotate")
def rotate_keys() -> None:
    """Make the next key sign now, if it has been published long enough.

    A key may only sign once every verifier's cached JWKS can hold it; when the next key is
    too young, this says when it will take over instead of breaking that rule.
    """
    ring = _open_ring()
    click.echo(ring.rotate_now())
