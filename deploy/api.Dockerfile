# syntax=docker/dockerfile:1
# md5-api image. Build from the repository root:
#   docker build -f deploy/api.Dockerfile -t md5-api .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Only the api and shared crates' sources and the web page enter this image. Cargo still needs
# every workspace member's manifest; the others get empty stand-in sources, never compiled.
COPY Cargo.toml Cargo.lock ./
COPY worker/Cargo.toml worker/Cargo.toml
COPY client/Cargo.toml client/Cargo.toml
COPY integration-tests/Cargo.toml integration-tests/Cargo.toml
RUN mkdir -p worker/src client/src integration-tests/src \
    && touch worker/src/lib.rs client/src/lib.rs integration-tests/src/lib.rs
COPY shared shared
COPY web web
COPY api api
# Registry and target caches survive between builds: dependencies are compiled once, and a
# source edit rebuilds only our crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p api --bin md5-api \
    && cp target/release/md5-api /usr/local/bin/md5-api

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 md5 && useradd --system --uid 10001 --gid 10001 --no-create-home md5 \
    && mkdir -p /data/uploads && chown md5 /data/uploads
COPY --from=build /usr/local/bin/md5-api /usr/local/bin/md5-api
USER 10001:10001
ENV BIND_ADDR=0.0.0.0:9000 UPLOAD_DIR=/data/uploads
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/md5-api"]
