"""The token rules: build contexts, image references, subjects, audiences, request tokens and
the claims of an ID token. Pure functions and values; the views wire them to HTTP."""
