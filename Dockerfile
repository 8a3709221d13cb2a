# syntax=docker/dockerfile:1
#
# smtp-sidecar in a container: built in the Rust image, run from Debian slim as an
# unprivileged user. Build and run (README "Running in production"):
#
#   docker build -t smtp-sidecar .
#   docker run -d --name smtp-sidecar --stop-timeout 45 -p 25:25 -p 127.0.0.1:9725:9725 \
#     -v /etc/smtp-sidecar:/etc/smtp-sidecar:ro -v smtp-sidecar-state:/var/lib/smtp-sidecar \
#     smtp-sidecar
#
# tests/packaging.rs checks this file against config.yaml.example, deploy/ and the binary:
# the ports, the configuration path, the health check path and the user.

# --- build -----------------------------------------------------------------------------------
# Same Debian release as the runtime image below, so the binary's glibc is there.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the build reads (the workspace and its bench targets, which the manifest names);
# tests, docs and deploy files stay out, so editing them does not rebuild.
COPY Cargo.toml Cargo.lock ./
COPY crates/smtp-core/Cargo.toml crates/smtp-core/Cargo.toml
COPY crates/smtp-core/src crates/smtp-core/src
COPY benches benches
COPY src src
# --locked: exactly the dependency versions of Cargo.lock, or fail. The caches keep the
# registry and the dependencies' builds between image builds; the binary is copied out of the
# cache mount in the same step. The release profile's line tables are most of the binary
# (55 of its 69 MB): stripped of them it is 14 MB, and a backtrace still names the functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/smtp-sidecar /usr/local/bin/smtp-sidecar \
    && strip --strip-debug /usr/local/bin/smtp-sidecar

# --- run -------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: the system trust roots that `trust.system_roots: true` loads (outbound
# `verify` / `domain-secure`, client certificates). The user has fixed ids so that Kubernetes
# can check runAsNonRoot and a Secret or ConfigMap can be made readable to it (fsGroup).
# /etc/smtp-sidecar is where the configuration (and usually the certificates) is mounted;
# /var/lib/smtp-sidecar is state_dir, the only place the sidecar writes (a generated
# self-signed certificate, when the configuration names no certificates).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10025 smtp-sidecar \
    && useradd --system --uid 10025 --gid smtp-sidecar --home-dir /var/lib/smtp-sidecar \
       --no-create-home --shell /usr/sbin/nologin smtp-sidecar \
    && install -d -o root -g smtp-sidecar -m 0750 /etc/smtp-sidecar \
    && install -d -o smtp-sidecar -g smtp-sidecar -m 0700 /var/lib/smtp-sidecar
COPY --from=build /usr/local/bin/smtp-sidecar /usr/local/bin/smtp-sidecar
USER 10025:10025
# 25: the inbound listener of config.yaml.example; 9725: metrics.listen (/metrics, /healthz,
# /readyz). In a container metrics.listen must be 0.0.0.0:9725 for anything outside it to
# reach the endpoint; the health check below runs inside the container and also works with
# 127.0.0.1:9725. Docker lets an unprivileged process bind port 25 in its own network
# namespace (net.ipv4.ip_unprivileged_port_start is 0 there since Docker 20.10).
EXPOSE 25 9725
# GET /healthz with bash's /dev/tcp: the image needs no HTTP client for it (no curl, no extra
# subcommand). Healthy when the status line says 200; a refused connection, another status
# or no answer within the timeout is unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9725 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r -t 4 status <&3 && [[ $status == 'HTTP/1.'?' 200 '* ]]"]
# SIGTERM drains sessions for shutdown_grace (30 s by default): give `docker stop` more time
# than that (--stop-timeout 45; compose: stop_grace_period: 45s). SIGHUP reloads.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/smtp-sidecar"]
CMD ["run", "-c", "/etc/smtp-sidecar/config.yaml"]
