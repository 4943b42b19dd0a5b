# syntax=docker/dockerfile:1
# Images for Kubernetes (deploy/kubernetes): the manifests name them "climesh" and
# "copilot-cli" and kustomize maps those to your registry.
#   docker build --target climesh     -t ghcr.io/climesh/climesh:0.1.0 .
#   docker build --target copilot-cli -t ghcr.io/climesh/copilot-cli:1.0.102 .
# No Docker engine runs in climesh's CI: TestDockerfile parses this file and checks it.

# Go binaries: xds-server, climesh-sidecar, climesh-connect, climesh-envoy-drain.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/...

# climesh: static binaries on distroless, as a non-root user.
FROM gcr.io/distroless/static-debian12:nonroot AS climesh
COPY --from=build /out/xds-server /out/climesh-sidecar /out/climesh-connect /out/climesh-envoy-drain /usr/local/bin/
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/xds-server"]

# copilot-cli: the Copilot CLI from npm, the version tools/install.sh pins. The
# entrypoint is the CLI's native binary (not npm's node wrapper, which would run it
# as a grandchild) under tini, so that the pod's SIGTERM reaches the CLI: a PID 1
# without handlers ignores it, and the pod would wait out its grace period.
FROM node:20-bookworm-slim AS copilot-cli
ARG COPILOT_VERSION=1.0.102
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/* \
 && npm install --global --no-audit --no-fund "@github/copilot@${COPILOT_VERSION}" && npm cache clean --force \
 && ln -s "$(npm root -g)/@github/copilot-linux-$(node -p process.arch)/copilot" /usr/local/bin/copilot-cli \
 && /usr/local/bin/copilot-cli --version
USER node
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/copilot-cli"]
