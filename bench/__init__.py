"""`make bench`: how close the issuer comes to what the machine allows.

The issuer runs under gunicorn exactly as `idp serve` runs it (file store, then a private
redis-server); `wrk` drives token exchange, JWKS and discovery at several concurrency levels;
the same run measures the ceilings to compare against (the raw signing rate of the same key in
as many processes as gunicorn workers, and a trivial Flask route under the same gunicorn
settings). See bench/README.md for how to read the results.
"""
