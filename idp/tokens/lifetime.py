"""The `lifetime` a step may ask for, as Buildkite's `--lifetime`: whole seconds, from
MIN_LIFETIME to IDP_TOKEN_MAX_TTL; without one, a token lives IDP_TOKEN_TTL.

Written as a decimal exactly as a client would write a number: no sign, no leading zero, no
unit, no fraction, ASCII digits only (`str.isdigit` also takes '²' and Arabic-Indic digits).
"""

from __future__ import annotations

from collections.abc import Sequence

from idp.config import MIN_LIFETIME, Settings
from idp.errors import InvalidRequest

# Longer digit strings are out of any range; never handed to int().
_MAX_DIGITS = 10


def requested_lifetime(values: Sequence[str], settings: Settings) -> int:
    """The lifetime in seconds asked for by the `lifetime` query values (the default when
    there are none), or InvalidRequest naming the parameter, the range and the fix."""
    if not values:
        return settings.token_ttl
    fix = (
        f"ask for whole seconds from {MIN_LIFETIME} to {settings.token_max_ttl} "
        f"(IDP_TOKEN_MAX_TTL), e.g. lifetime={min(900, settings.token_max_ttl)}, or leave "
        f"lifetime out for the default {settings.token_ttl}"
    )
    if len(values) > 1:
        raise InvalidRequest(f"the lifetime parameter is given {len(values)} times: {fix}, once")
    raw = values[0]
    if raw == "":
        raise InvalidRequest(f"the lifetime parameter is empty: {fix}")
    if not (raw.isascii() and raw.isdigit()) or raw[0] == "0":
        raise InvalidRequest(
            f"lifetime={raw[:20]!r} is not a whole number of seconds written in digits "
            f"(no sign, leading zero, unit or fraction): {fix}"
        )
    if len(raw) > _MAX_DIGITS or not MIN_LIFETIME <= int(raw) <= settings.token_max_ttl:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        raise InvalidRequest(f"lifetime={shown} is out of range: {fix}")
    return int(raw)
