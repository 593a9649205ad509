# syntax=docker/dockerfile:1
# md5-worker image. Build from the repository root:
#   docker build -f deploy/worker.Dockerfile -t md5-worker .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Registry and target caches survive between builds, so a source edit rebuilds only our crates.
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
