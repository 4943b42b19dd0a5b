# climesh — the two commands a new user needs are `make demo` and `make test`.
# Every tool they need is installed by `make tools` into .tools/ (git-ignored).

GO ?= go

.PHONY: all tools build demo test test-short bench bench-convergence bench-translate bench-datapath bench-decisions bench-sharedsession bench-failover bench-capacity bench-fanout golden clean

all: build

tools:
	tools/install.sh

build:
	$(GO) build -o bin/ ./cmd/...

# A local demo on the embedded defaults, in the production shape (JWT, the shipped
# policy at the edge and in every sidecar): static fleet, no Consul, real Envoy.
# Built, then run in make's place: `go run` exits 1 on Ctrl-C whatever its program
# does, and make would report that as an error.
demo: tools
	$(GO) build -o bin/demo ./tools/demo && exec bin/demo

# Every test: unit, golden, contract, and end-to-end with real Consul and Envoy.
test: tools
	$(GO) vet ./...
	$(GO) test -count=1 -shuffle=on -timeout 20m ./...

# The inner loop: seconds, no external tools.
test-short:
	$(GO) test -short ./...

golden:
	$(GO) test ./xds -update

bench: bench-translate bench-convergence bench-datapath bench-decisions bench-sharedsession bench-failover bench-capacity bench-fanout

bench-translate:
	$(GO) test -run '^$$' -bench . -benchmem ./xds

bench-failover: tools
	$(GO) run ./bench/failover

bench-capacity: tools
	$(GO) run ./bench/capacity

bench-sharedsession: tools
	$(GO) run ./bench/sharedsession

bench-decisions:
	$(GO) run ./bench/decisions

bench-datapath: tools
	$(GO) run ./bench/datapath

# One change to many simulated Envoys (issue 16): the real xds-server, no Envoy.
bench-fanout:
	$(GO) run ./bench/fanout

bench-convergence: tools
	$(GO) run ./bench/convergence

clean:
	rm -rf bin
