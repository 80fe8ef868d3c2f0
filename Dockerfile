# syntax=docker/dockerfile:1
# pqkms: one image for every role. `pqkms up` (the default) runs the whole stack in one
# container; compose.yaml runs the same image as `pqkms worker`, `pqkms bridge` and
# `pqkms db upgrade`.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/pqkms
WORKDIR /src
# Only what the wheel needs (.dockerignore keeps tests, secrets and caches out).
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY worker ./worker
COPY api_bridge ./api_bridge
COPY pqkms ./pqkms
RUN /opt/pqkms/bin/pip install /src

FROM python:3.11-slim
RUN groupadd --system --gid 10001 pqkms \
    && useradd --system --uid 10001 --gid pqkms --home-dir /home/pqkms --create-home \
        --shell /usr/sbin/nologin pqkms \
    && install -d -o pqkms -g pqkms -m 0700 /data
COPY --from=build /opt/pqkms /opt/pqkms
ENV PATH=/opt/pqkms/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PQKMS_DATA_DIR=/data \
    PQKMS_HTTP_HOST=0.0.0.0 \
    PQKMS_HTTP_ALLOW_PLAIN=true
# The bridge listens on all of the container's addresses in plain HTTP: publish it on the
# host's loopback (-p 127.0.0.1:8000:8000) or behind a proxy that terminates TLS, or
# mount a certificate and set PQKMS_HTTP_TLS_CERT_FILE / PQKMS_HTTP_TLS_KEY_FILE for
# HTTPS from the bridge itself, which then serves nothing else (docs/http-api.md).
USER pqkms
WORKDIR /home/pqkms
VOLUME ["/data"]
# 8000: HTTP bridge. 4222: the embedded NATS of `pqkms up`, reachable from outside the
# container only with PQKMS_NATS_HOST=0.0.0.0 (it listens on loopback by default).
EXPOSE 8000 4222
ENTRYPOINT ["pqkms"]
CMD ["up"]
