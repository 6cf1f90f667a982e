# Build stage: the same toolchain the project pins (rust-version in Cargo.toml).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY fhir ./fhir
COPY migrations ./migrations
COPY benches ./benches
RUN cargo build --release --locked --bin ferry

# Runtime stage: a slim image, a non-root user, data on a volume.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/ferry --create-home ferry
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
COPY mappings /etc/ferry/mappings
USER ferry
WORKDIR /var/lib/ferry
ENV FERRY_MLLP_LISTEN=0.0.0.0:2575 \
    FERRY_HTTP_LISTEN=0.0.0.0:8080 \
    FERRY_DATABASE_URL=sqlite:///var/lib/ferry/ferry.db \
    FERRY_MAPPINGS_DIR=/etc/ferry/mappings
VOLUME ["/var/lib/ferry"]
EXPOSE 2575 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health/ready || exit 1
ENTRYPOINT ["ferry"]
CMD ["serve"]
