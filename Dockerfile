# One image with every natsflow binary: the workers (natsflow-fetcher, -mapper, -saver,
# -broadcaster), the operator (natsflow-operator, the entrypoint) and the natsflow CLI.
#   docker build -t natsflow/natsflow:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# distroless: no shell, no package manager; runs as the nonroot user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build \
    /src/target/release/natsflow-fetcher \
    /src/target/release/natsflow-mapper \
    /src/target/release/natsflow-saver \
    /src/target/release/natsflow-broadcaster \
    /src/target/release/natsflow-operator \
    /src/target/release/natsflow \
    /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/natsflow-operator"]
