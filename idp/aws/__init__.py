"""What an operator runs to make AWS trust the issuer.

- `thumbprint`: the SHA-1 thumbprint AWS pins, by AWS's documented procedure;
- `register`: the IAM OIDC provider, created or brought up to date;
- `trust_policy`: a role trust policy built only from the condition keys AWS evaluates;
- `role`: that policy applied to an IAM role;
- `tags`: AWS's session-tag character rules, shared with the token side.

Nothing here is needed to serve tokens; the modules only read the issuer's discovery document.
"""

# The audience AWS STS asks for by default (and Vela's aws-credentials plugin sends).
DEFAULT_AUDIENCE = "sts.amazonaws.com"
