"""idp: a self-hosted OpenID Connect identity provider for CI pipelines."""

__version__ = "0.1.0"
