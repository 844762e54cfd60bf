# rehydrator's production image: `rehydrator run` as ECS runs it (JSON logs, status endpoint on
# 0.0.0.0:9090, health checked through `rehydrator healthcheck`). Build with BuildKit (the
# default builder since Docker 23):
#
#   docker build -t rehydrator .
#   docker run --rm -v "$PWD/rehydrator.toml:/etc/rehydrator/rehydrator.toml:ro" \
#       -e CONSUL_HTTP_ADDR=https://consul.internal:8501 -e CONSUL_HTTP_TOKEN rehydrator
#
# The toolchain is pinned so an image rebuilt from the same commit is built by the same compiler;
# Cargo.lock pins everything else (--locked).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target directory live in BuildKit cache mounts: a rebuild after a source
# change recompiles the workspace crates only, not the ~400 dependencies (the AWS SDKs alone take
# minutes). A cache mount is not part of the image, so the binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin rehydrator \
    && install -D -m 0755 target/release/rehydrator /out/rehydrator

# Debian slim rather than distroless: `exec` actions and the ECS task's config step need a shell
# (see deploy/cloudformation.yaml), and operators expect `docker exec ... sh` to work.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rehydrator \
    && useradd --system --uid 10001 --gid rehydrator --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rehydrator \
    && mkdir -p /etc/rehydrator
COPY --from=build /out/rehydrator /usr/local/bin/rehydrator

# JSON lines for CloudWatch (awslogs keeps stdout and stderr; rehydrator logs to stderr), and the
# status endpoint reachable from outside the container: the file's [status] listen defaults to
# loopback, which only the health check could reach.
ENV REHYDRATOR_LOG_FORMAT=json \
    REHYDRATOR_STATUS__LISTEN=0.0.0.0:9090
EXPOSE 9090
USER 10001:10001

# Within ECS's 5-second default check timeout; the task definition repeats this check because
# ECS ignores the image's HEALTHCHECK.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["rehydrator", "healthcheck", "--url", "http://127.0.0.1:9090/healthz", "--timeout", "3s"]

# SIGTERM (docker stop, ECS's StopTask) makes `run` release its lock and destroy its session
# before exiting; ECS's stopTimeout (30 s in the template) bounds it.
ENTRYPOINT ["rehydrator"]
CMD ["run", "--config", "/etc/rehydrator/rehydrator.toml"]
