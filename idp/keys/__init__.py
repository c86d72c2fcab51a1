"""The signing key ring: key life rules (`ring`), key material (`material`), the service (`keyring`)."""
