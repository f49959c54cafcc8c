# Multi-stage build: one image carries both binaries (tollgate and stub-service), so
# docker-compose.yml runs the proxy and the stub services from the same build.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && strip target/release/tollgate target/release/stub-service

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY --from=build /src/target/release/stub-service /usr/local/bin/stub-service
COPY deploy/config.docker.yaml /etc/tollgate/config.yaml
USER tollgate
EXPOSE 8000 8443 9000
ENTRYPOINT ["tollgate"]
CMD ["run", "-c", "/etc/tollgate/config.yaml"]
