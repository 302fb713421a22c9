# syntax=docker/dockerfile:1
#
# referrald container image. Build:   docker build -t referrald .
# Run (secrets as files, never as build args or baked-in env):
#   docker run --stop-timeout 30 -p 127.0.0.1:9464:9464 \
#     -v /etc/referrald/credentials-by-key:/run/credentials:ro -e CREDENTIALS_DIRECTORY=/run/credentials \
#     -v /etc/referrald/programs.yaml:/etc/referrald/programs.yaml:ro \
#     referrald
# where the first mounted folder holds files named REFERRALD_AMQP_URL and REFERRALD_DATABASE_URL
# (the same files systemd's LoadCredential= provides). The image carries no programs file: they
# set real reward amounts, and a baked-in example would pay them silently. Without one mounted,
# `run` exits 78 (EX_CONFIG) saying to mount one. --stop-timeout 30 (compose:
# stop_grace_period: 30s) because Docker's default 10s is shorter than the daemon's drain
# (REFERRALD_DRAIN_TIMEOUT_SECONDS=20). Migrations: `docker run ... referrald migrate`; the
# broker objects: `docker run ... referrald topology` with a user that may configure them.
# scripts/check-image.sh (part of scripts/test.sh) runs the build stage's commands on a context
# assembled as .dockerignore defines it, since no Docker engine runs on the CI machines.

# ---- build ----------------------------------------------------------------------------------
FROM swift:6.3-bookworm AS build

# C libraries the CRabbitMQ and CLibPQ system-library targets link against (found by pkg-config).
RUN apt-get update \
    && apt-get install -y --no-install-recommends librabbitmq-dev libpq-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Dependencies first, so that a change in Sources/ does not re-fetch them; Package.resolved
# pins their versions. Package.swift declares the test targets only where Tests/ exists, and
# .dockerignore leaves it out.
COPY Package.swift Package.resolved ./
RUN swift package resolve
COPY Sources ./Sources
# --static-swift-stdlib links the Swift runtime and Foundation into the binary: the runtime
# image needs no Swift toolchain, only the C libraries below. The crash backtracer the runtime
# starts on a fatal signal is a separate program; its static build (swift-backtrace-static,
# beside the toolchain's swift) needs no Swift libraries either.
RUN swift build -c release --static-swift-stdlib --product referrald \
    && install -D -m 0755 "$(swift build -c release --show-bin-path)/referrald" /out/referrald \
    && install -D -m 0755 "$(dirname "$(readlink -f "$(command -v swift)")")/../libexec/swift/linux/swift-backtrace-static" \
         /out/swift-backtrace

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
COPY --from=build /out/swift-backtrace /usr/local/libexec/swift-backtrace

# REFERRALD_PROGRAMS_FILE: where to mount the programs file (none is baked in).
# REFERRALD_HTTP_HOST: a container's loopback is its own, so the default 127.0.0.1 would leave
# /metrics and the probes unreachable from the host, Prometheus and the kubelet; publish the
# port on the host's loopback (-p 127.0.0.1:9464:9464) or a private network only.
# SWIFT_BACKTRACE: a statically linked binary has no libswiftCore.so to find the backtracer
# relative to, so without its path a crash prints no backtrace at all. Non-interactive (there is
# no terminal), on stderr (the container log, with the daemon's lines), every thread (a wedged
# pipeline shows where the others stood); sanitize shortens paths that may hold user names.
ENV REFERRALD_PROGRAMS_FILE=/etc/referrald/programs.yaml \
    REFERRALD_LOG_FORMAT=json \
    REFERRALD_HTTP_HOST=0.0.0.0 \
    SWIFT_BACKTRACE=enable=yes,interactive=no,output-to=stderr,threads=all,sanitize=yes,swift-backtrace=/usr/local/libexec/swift-backtrace
EXPOSE 9464

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
