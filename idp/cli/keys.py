"""`idp keys list|rotate`: the key ring as operators see it."""

from __future__ import annotations

import json
from typing import Any

import click

from idp.config import load_settings
from idp.keys.keyring import KeyRing
from idp.keys.ring import iso
from idp.store import create_store


def _open_ring() -> KeyRing:
    settings = load_settings()
    ring = KeyRing(settings, create_store(settings))
    ring.refresh()
    return ring


_when = iso


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


@keys.command("backup")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, writable=True), default="-",
    help="Write the copy here instead of stdout; keep it as safe as the keys themselves.",
)  # fmt: skip
def backup_keys(output: str) -> None:
    """Print a copy of the stored key ring, for `idp keys repair --from`.

    Private keys in it are sealed under IDP_KEY_ENCRYPTION_KEY when one is set (and the
    copy is authenticated under it); without one they are in the clear.
    """
    settings = load_settings()
    store = create_store(settings)
    raw = store.read_ring()
    if raw is None:
        raise click.ClickException(f"no key ring is stored in {store.describe_ring()} yet")
    with click.open_file(output, "w") as fh:
        fh.write(json.dumps(raw, indent=1) + "\n")


@keys.command("repair")
@click.option(
    "--from",
    "backup",
    type=click.File("r"),
    default=None,
    help="Write this copy of the ring (from `idp keys backup`, or a copy of ring.json).",
)
@click.option(
    "--adopt",
    is_flag=True,
    help="Accept the ring (stored, or --from) though it is not authenticated under "
    "IDP_KEY_ENCRYPTION_KEY: written without one, or by a version before rings had a MAC.",
)
@click.option(
    "--new", "new", is_flag=True,
    help="Start a new ring. Tokens signed by the old keys stop verifying.",
)  # fmt: skip
def repair_keys(backup: Any, adopt: bool, new: bool) -> None:
    """Say whether the stored key ring is sound, and restore or replace it if told to.

    The issuer never writes over a ring it cannot read or authenticate: that would drop the
    keys of live tokens. Without options this only reports; exit 1 when the ring is refused.
    """
    if new and (backup is not None or adopt):
        raise click.UsageError(
            "--new starts from nothing: it cannot be used with --from or --adopt"
        )
    settings = load_settings()
    ring = KeyRing(settings, create_store(settings))
    if backup is None and not adopt and not new:
        sound, sentence = ring.diagnose()
        click.echo(sentence)
        if not sound:
            raise SystemExit(1)
        return
    document = None
    if backup is not None:
        try:
            document = json.load(backup)
        except ValueError:
            raise click.ClickException(
                f"{backup.name} is not JSON: pass a file written by `idp keys backup`"
            ) from None
        if not isinstance(document, dict):
            raise click.ClickException(
                f"{backup.name} does not hold a key ring: pass a file written by `idp keys backup`"
            )
    click.echo(ring.repair(backup=document, adopt=adopt, new=new))
