# syntax=docker/dockerfile:1
# Images for Kubernetes (deploy/kubernetes): the manifests name them "climesh" and
# "copilot-cli" and kustomize maps those to your registry.
#   docker build --target climesh     -t ghcr.io/climesh/climesh:0.1.0 .
#   docker build --target copilot-cli -t ghcr.io/climesh/copilot-cli:1.0.102 .
# No Docker engine runs in climesh's CI: TestDockerfile parses this file and checks it.

# Go binaries: xds-server, climesh-sidecar, climesh-connect.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/...

# climesh: static binaries on distroless, as a non-root user.
FROM gcr.io/distroless/static-debian12:nonroot AS climesh
COPY --from=build /out/xds-server /out/climesh-sidecar /out/climesh-connect /usr/local/bin/
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/xds-server"]

# copilot-cli: the Copilot CLI from npm, the version tools/install.sh pins.
FROM node:20-bookworm-slim AS copilot-cli
ARG COPILOT_VERSION=1.0.102
RUN npm install --global --no-audit --no-fund "@github/copilot@${COPILOT_VERSION}" && npm cache clean --force
USER node
ENTRYPOINT ["copilot"]
