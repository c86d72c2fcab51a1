"""What every HTTP client of ours shares (the runner's `idp token`, the CI side's `idp ci`).

Redirects are never followed: urllib resends every header of the request to the new address,
`Authorization` included, so a redirect (a misconfigured proxy, a hostile or hijacked URL in a
step's environment) would hand a request token or a CI secret to whoever it points at.
"""

from __future__ import annotations

import urllib.request
from typing import Any


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse to follow: returning None makes urllib raise the 3xx as an HTTPError."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
