# flowd container: `docker build -t flowd . && docker run --env-file flowd.env flowd`
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flowd ./flowd
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 flowd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER flowd
ENV FLOWD_LOG_FORMAT=json PYTHONUNBUFFERED=1
# SIGTERM drains in-flight work (FLOWD_SHUTDOWN_TIMEOUT_S); give `docker stop -t 35`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["flowd"]
CMD ["run"]
