# Stub until the deployment issue: builds the binary and runs it. The production image
# (multi-stage, non-root, HEALTHCHECK, JSON logs) comes with that issue.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rehydrator /usr/local/bin/rehydrator
ENTRYPOINT ["/usr/local/bin/rehydrator"]
CMD ["sim", "--listen", "0.0.0.0:8500"]
