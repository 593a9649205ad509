# syntax=docker/dockerfile:1
# md5-worker image. Build from the repository root:
#   docker build -f deploy/worker.Dockerfile -t md5-worker .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Only the worker and shared crates' sources enter this image. Cargo still needs every
# workspace member's manifest; the others get empty stand-in sources, never compiled.
COPY Cargo.toml Cargo.lock ./
COPY api/Cargo.toml api/Cargo.toml
COPY client/Cargo.toml client/Cargo.toml
COPY integration-tests/Cargo.toml integration-tests/Cargo.toml
RUN mkdir -p api/src client/src integration-tests/src \
    && touch api/src/lib.rs client/src/lib.rs integration-tests/src/lib.rs
COPY shared shared
COPY worker worker
# Registry and target caches survive between builds: dependencies are compiled once, and a
# source edit rebuilds only our crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p worker --bin md5-worker \
    && cp target/release/md5-worker /usr/local/bin/md5-worker

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 md5 && useradd --system --uid 10001 --gid 10001 --no-create-home md5 \
    && mkdir -p /data/uploads /data/log && chown md5 /data/uploads /data/log
COPY --from=build /usr/local/bin/md5-worker /usr/local/bin/md5-worker
USER 10001:10001
ENV UPLOAD_DIR=/data/uploads LOG_FILE=/data/log/md5.log
ENTRYPOINT ["/usr/local/bin/md5-worker"]
