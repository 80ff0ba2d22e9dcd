# syntax=docker/dockerfile:1
#
# Multi-stage build of the flashsale server.
#   docker build -t flashsale .
#   docker compose up --build          (with Redis and PostgreSQL; see compose.yaml)
#
# The runtimes' default seccomp profiles (Docker >= 25, podman) block io_uring_setup,
# io_uring_enter and io_uring_register: the server then falls back to epoll and logs a
# warning. compose.yaml runs it under deploy/seccomp-io-uring.json, which allows them.
# scripts/container-check.sh builds and runs this file with podman.

############################ build ############################
# The Rust that Cargo.toml's rust-version names (Cargo.lock's dependencies need it).
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The whole context (see .dockerignore); the binary embeds lua/ and migrations/.
COPY . .

# The commit for the flashsale_build_info metric. .git is not in the context, so the
# build script cannot ask git; pass it:
#   docker build --build-arg FLASHSALE_COMMIT="$(git rev-parse --short=12 HEAD)" -t flashsale .
ARG FLASHSALE_COMMIT=unknown

# Cargo registry and target dir live in BuildKit cache mounts so rebuilds are
# incremental; the binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    FLASHSALE_COMMIT="$FLASHSALE_COMMIT" cargo build --release --locked \
 && install -D -m 0755 target/release/flashsale /out/flashsale

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin flashsale

COPY --from=builder /out/flashsale /usr/local/bin/flashsale
# Embedded in the binary; shipped for reference (operators, analysts).
COPY migrations/ /usr/share/flashsale/migrations/
COPY lua/ /usr/share/flashsale/lua/

USER flashsale:flashsale
ENV FLASHSALE_LISTEN=0.0.0.0:8080 \
    FLASHSALE_LOG=info
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/flashsale"]
