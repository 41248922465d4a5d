# syntax=docker/dockerfile:1
# salespulse in a container: the headless services (HTTP API, ingest
# workers, the generator) for docker-compose.yml. Two stages: a Rust build
# with the `dist` profile, then a slim runtime with only the shared
# libraries the binary links (tests/dist.rs checks them against `ldd`).
#
#   docker build -t salespulse .
#   docker run --rm salespulse doctor

FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ make pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile dist --bin salespulse \
 && cp target/dist/salespulse /usr/local/bin/salespulse

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/salespulse salespulse
COPY --from=build /usr/local/bin/salespulse /usr/local/bin/salespulse
USER salespulse
WORKDIR /var/lib/salespulse
ENV SALESPULSE_DATA_DIR=/var/lib/salespulse \
    RUST_BACKTRACE=0
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/salespulse"]
CMD ["serve", "--bind", "0.0.0.0:8080"]
