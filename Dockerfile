# syntax=docker/dockerfile:1

# ---- Build ------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Only what the build reads. Migrations are embedded into the binary at compile time.
COPY Cargo.toml Cargo.lock ./
COPY actors ./actors
COPY src ./src
COPY migrations ./migrations
COPY templates ./templates

# Cache the registry and the target directory between builds; the binary is copied
# out of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked -p devpocket \
 && install -m 0755 target/release/devpocket /usr/local/bin/devpocket

# ---- Runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# postgresql: the embedded database when DATABASE_URL is unset (no default cluster is
# created; DevPocket makes its own in the data directory).
# openssh-server, tmux: environments and terminals. acl: traverse grants when run as root.
# curl: the health check.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends postgresql-common; \
    sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' /etc/postgresql-common/createcluster.conf; \
    apt-get install -y --no-install-recommends \
        ca-certificates curl postgresql openssh-server tmux acl; \
    rm -f /etc/ssh/ssh_host_*; \
    rm -rf /var/lib/apt/lists/*

# The built-in templates' packages (templates/*.yaml, `packages`): the image runs
# unprivileged and cannot install them when an environment needs them. A slimmer image
# for custom templates: --build-arg TEMPLATE_PACKAGES="".
ARG TEMPLATE_PACKAGES="build-essential pkg-config libssl-dev git curl vim nano htop \
golang-go nodejs npm python3 python3-pip python3-venv python3-dev rustc cargo"
RUN set -eux; \
    if [ -n "$TEMPLATE_PACKAGES" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends $TEMPLATE_PACKAGES; \
        rm -rf /var/lib/apt/lists/*; \
    fi

RUN useradd --uid 10001 --user-group --create-home --shell /bin/bash devpocket \
 && install -d -m 0700 -o devpocket -g devpocket /var/lib/devpocket

COPY --from=builder /usr/local/bin/devpocket /usr/local/bin/devpocket

ENV DEVPOCKET_LISTEN=0.0.0.0:8000 \
    DEVPOCKET_DATA_DIR=/var/lib/devpocket

USER devpocket
WORKDIR /home/devpocket
VOLUME ["/var/lib/devpocket"]
EXPOSE 8000

# The port follows DEVPOCKET_LISTEN; the first start may spend a while in initdb.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS --max-time 4 -o /dev/null "http://127.0.0.1:${DEVPOCKET_LISTEN##*:}/health/live" || exit 1

ENTRYPOINT ["devpocket"]
CMD ["serve"]
