# syntax=docker/dockerfile:1
#
# olps: `docker build -t olps .` then `docker run --rm -e DATABASE_URL=postgres://... olps migrate`.
# docker-compose.yml runs it together with PostgreSQL.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole crate (see .dockerignore): Cargo.toml may name tests, benches or examples whose files
# must exist for the manifest to load, and migrations/ is embedded into the binary at compile time.
COPY . .
# The cache mounts keep the registry and the compiled dependencies between builds; the target
# folder lives only in the cache, so the binary is copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin olps \
    && install -m 0755 target/release/olps /usr/local/bin/olps

# ---- run --------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates and libssl3 (OpenSSL): TLS to PostgreSQL (sslmode=require, verify-ca,
# verify-full). No curl: the compose healthcheck speaks
# HTTP through bash's /dev/tcp (bash is part of the slim image).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 olps \
    && useradd --system --uid 10001 --gid olps --home-dir /home/olps --create-home \
       --shell /usr/sbin/nologin olps
COPY --from=builder /usr/local/bin/olps /usr/local/bin/olps
# Numeric, so orchestrators can verify runAsNonRoot.
USER 10001:10001
WORKDIR /home/olps
EXPOSE 8080
ENTRYPOINT ["olps"]
CMD ["--help"]
