# syntax=docker/dockerfile:1
# The idp issuer image: `docker build -t registry.example.com/idp:0.1.0 .`
# The Helm chart in helm/ runs it; see docs/kubernetes.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: install the package into a venv, exactly as the README does (`pip install .`) --
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/idp
WORKDIR /src
# Only what the build reads: the project metadata (with the readme it names) and the package.
COPY pyproject.toml README.md ./
COPY idp ./idp
# Every dependency ships wheels, so no compiler is needed; no extras: the test and dev tools
# stay out of the image.
RUN /opt/idp/bin/pip install . \
 && /opt/idp/bin/idp --help >/dev/null

# --- runtime: the venv and a non-root user, nothing else ------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="idp" \
      org.opencontainers.image.description="A self-hosted OpenID Connect identity provider for CI pipelines" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 idp \
 && useradd --system --uid 10001 --gid idp --home-dir /var/lib/idp --no-create-home \
        --shell /usr/sbin/nologin idp \
 && install -d -o idp -g idp -m 0700 /var/lib/idp /var/lib/idp/keys
COPY --from=builder /opt/idp /opt/idp
# IDP_HOST/IDP_PORT are `idp serve`'s --host/--port: listen on every interface, port 8080.
# The file key store (no IDP_REDIS_URL) lives in /var/lib/idp/keys: mount a volume there.
ENV PATH=/opt/idp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IDP_HOST=0.0.0.0 \
    IDP_PORT=8080 \
    IDP_KEYS_DIR=/var/lib/idp/keys
WORKDIR /var/lib/idp
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["idp"]
CMD ["serve"]
