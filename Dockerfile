# pgkeel in a container. Build: docker build -t pgkeel .
# Run:   docker run -p 54320:54320 -v $PWD/config.toml:/etc/pgkeel/config.toml pgkeel
# (The packaging issue adds compose files and a multi-instance setup.)
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    libprotobuf-dev libclang-dev clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin pgkeel

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --no-create-home pgkeel
COPY --from=build /src/target/release/pgkeel /usr/local/bin/pgkeel
COPY config.toml /etc/pgkeel/config.toml
USER pgkeel
EXPOSE 54320 9930
ENTRYPOINT ["/usr/local/bin/pgkeel"]
CMD ["--config", "/etc/pgkeel/config.toml"]
