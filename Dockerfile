# syntax=docker/dockerfile:1
# flowd's container image. Build: `docker build -t flowd .`
# Run:   docker run --env-file flowd.env -p 127.0.0.1:9464:9464 flowd    (README, "Operations")
#
# The base is pinned by digest (python:3.11.10-slim-bookworm, linux/amd64 + arm64 index);
# update tag and digest together, e.g. with Renovate or Dependabot.
FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16 AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, each pinned with its hashes (pip-compile --generate-hashes): this layer
# is rebuilt only when a lock file changes.
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps -r requirements-build.lock \
    && python -m venv /opt/flowd \
    && /opt/flowd/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY flowd ./flowd
COPY migrations ./migrations
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/flowd/bin/pip install --no-deps /wheels/flowd-*.whl

FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16
LABEL org.opencontainers.image.title="flowd" \
      org.opencontainers.image.description="Rule-based automation daemon for Supabase and Postgres" \
      org.opencontainers.image.source="https://github.com/flowd/flowd" \
      org.opencontainers.image.documentation="https://github.com/flowd/flowd#operations" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /opt/flowd /opt/flowd
ENV PATH=/opt/flowd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLOWD_LOG_FORMAT=json \
    FLOWD_HTTP_ADDR=0.0.0.0:9464
# No account needed: a numeric id that owns nothing in the image.
USER 10001:10001
EXPOSE 9464
# SIGTERM drains in-flight work for FLOWD_SHUTDOWN_TIMEOUT_S (25 s): `docker stop -t 35`.
STOPSIGNAL SIGTERM
# Liveness, not readiness: an unreachable Supabase or Postgres must not get flowd restarted.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "flowd.ops.health", "/livez"]
ENTRYPOINT ["flowd"]
CMD ["run"]
