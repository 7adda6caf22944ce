# Postbridge image: one image with the three binaries (postbridge-api, postbridge-worker,
# postbridge-migrate); docker-compose.yml picks the command per service.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Copy only the workspace sources (keeps target/ and local secrets such as .postbridge-dev.env out).
COPY Cargo.toml Cargo.lock ./
COPY core core
COPY api api
COPY worker worker
COPY migration migration
COPY tests tests
RUN cargo build --release --locked -p postbridge-api -p postbridge-worker -p postbridge-migration \
 && mkdir -p /out \
 && cp target/release/postbridge-api target/release/postbridge-worker target/release/postbridge-migrate /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 postbridge \
 && useradd --system --uid 10001 --gid postbridge --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin postbridge
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
ENV POSTBRIDGE_LISTEN_ADDR=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
CMD ["postbridge-api", "serve"]
