# pgkeel in a container. Build: docker build -t pgkeel .
# Run:   docker run -p 54320:54320 -v $PWD/config.toml:/etc/pgkeel/config.toml pgkeel
# Several instances, a Patroni cluster, Prometheus and Grafana: examples/compose/.
# Checked by tests/it/deploy_files.rs (hadolint, and its steps run on the host).
FROM rust:1-bookworm AS build
# Debian's versions move with the base image: pinning them would break the
# build at the next point release, not make it reproducible.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    libprotobuf-dev libclang-dev clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
COPY assets assets
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin pgkeel

FROM debian:bookworm-slim
# A numeric uid, so that Kubernetes' runAsNonRoot can check it.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home pgkeel
COPY --from=build /src/target/release/pgkeel /usr/local/bin/pgkeel
COPY config.toml /etc/pgkeel/config.toml
USER 10001:10001
EXPOSE 54320 9930
# Healthy when /ready answers 200 (a primary is known). bash's /dev/tcp asks
# it, so the image needs no curl; the port is [admin] listen's.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9930 && printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["/usr/local/bin/pgkeel"]
CMD ["--config", "/etc/pgkeel/config.toml"]
