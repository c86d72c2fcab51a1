"""The signing key ring.

Key life rules (`ring`), key material (`material`), the service views use (`keyring`).
"""
