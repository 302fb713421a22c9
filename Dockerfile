# syntax=docker/dockerfile:1
#
# referrald container image. Build:   docker build -t referrald .
# Run (secrets as files, never as build args or baked-in env):
#   docker run --stop-timeout 30 \
#     -v /etc/referrald/credentials-by-key:/run/credentials:ro -e CREDENTIALS_DIRECTORY=/run/credentials \
#     referrald
# where the mounted folder holds files named REFERRALD_AMQP_URL and REFERRALD_DATABASE_URL
# (the same files systemd's LoadCredential= provides). --stop-timeout 30 (compose:
# stop_grace_period: 30s) because Docker's default 10s is shorter than the daemon's drain
# (REFERRALD_DRAIN_TIMEOUT_SECONDS=20). Migrations: `docker run ... referrald migrate`.
# The metrics/health endpoint listens on 127.0.0.1 only: scrape it from a sidecar that shares
# the network namespace (a Kubernetes pod), not through a published port.

# ---- build ----------------------------------------------------------------------------------
FROM swift:6.3-bookworm AS build

# C libraries the CRabbitMQ and CLibPQ system-library targets link against (found by pkg-config).
RUN apt-get update \
    && apt-get install -y --no-install-recommends librabbitmq-dev libpq-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Dependencies first, so that a change in Sources/ does not re-fetch them. Package.resolved
# (if present: it is not committed) pins the dependency versions of the local build.
COPY Package.swift Package.resolve[d] ./
RUN swift package resolve
COPY Sources ./Sources
# --static-swift-stdlib links the Swift runtime and Foundation into the binary: the runtime
# image needs no Swift toolchain, only the C libraries below.
RUN swift build -c release --static-swift-stdlib --product referrald \
    && install -D -m 0755 "$(swift build -c release --show-bin-path)/referrald" /out/referrald

# ---- runtime --------------------------------------------------------------------------------
FROM debian:bookworm-slim

# librabbitmq4/libpq5: the AMQP and PostgreSQL client libraries; ca-certificates: TLS to the
# broker and the database. libstdc++6, libgcc-s1 and zlib1g are already in bookworm-slim.
# Versions are not pinned (see .hadolint.yaml): bookworm only ever moves on security fixes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends librabbitmq4 libpq5 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 referrald \
    && useradd --system --uid 10001 --gid referrald --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin referrald

COPY --from=build /out/referrald /usr/local/bin/referrald
# Default programs; mount your own file over it (or set REFERRALD_PROGRAMS_FILE).
COPY --chmod=0644 deploy/programs.example.yaml /etc/referrald/programs.yaml

ENV REFERRALD_PROGRAMS_FILE=/etc/referrald/programs.yaml \
    REFERRALD_LOG_FORMAT=json

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001

# Health check without adding curl (and libcurl, and its TLS stack) to the image: bash, head
# and grep are in bookworm-slim, and bash's /dev/tcp speaks enough HTTP/1.0 for GET /healthz.
# exec form with bash explicitly, because /bin/sh (dash) has no /dev/tcp.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${REFERRALD_HTTP_PORT:-9464} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# SIGTERM (the default) starts the drain: finish the batch in flight, then exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/referrald"]
CMD ["run"]
